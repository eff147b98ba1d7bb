// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {ILiquidityPool} from "./interfaces/ILiquidityPool.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";
import {PoolWhitelist} from "./PoolWhitelist.sol";

/// @title RebalancingVault
/// @notice Baskets with target weights, each owned by one user. When a basket's drift from
/// its targets passes its threshold, anyone may rebalance it through listed pools. One call
/// may only sell overweight tokens into underweight ones, never more than their distance
/// from target (so no token is both bought and sold and nothing is churned); every trade
/// must get at least the oracle value less the basket's slippage bound, the basket must end
/// under its threshold having lost at most that bound of its value, and the caller earns the
/// basket's reward on the value moved toward the targets (the drift removed), not on volume.
contract RebalancingVault is PoolWhitelist, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    uint256 private constant BPS = 10_000;
    uint256 public constant MAX_TOKENS = 8;
    uint256 public constant MAX_REWARD_BPS = 50;

    struct Basket {
        address owner;
        uint16 driftThresholdBps;
        uint16 maxSlippageBps;
        uint16 rewardBps;
        address[] tokens;
        uint16[] weightsBps;
    }

    struct Trade {
        address pool;
        address tokenIn;
        uint256 amountIn;
    }

    /// @dev One rebalance's view of a basket at the oracle's prices. `room[i]` is how much
    /// value token i may still move: sold while `seller[i]`, bought otherwise.
    struct Book {
        uint256[] prices;
        uint256[] room;
        bool[] seller;
        uint256 valueBefore;
    }

    IPriceOracle public immutable oracle;
    uint256 public basketCount;

    mapping(uint256 id => Basket) private _baskets;
    mapping(uint256 id => mapping(address token => uint256)) public balanceOf;
    mapping(address token => uint256) private _unit;

    event BasketCreated(
        uint256 indexed id,
        address indexed owner,
        address[] tokens,
        uint16[] weightsBps,
        uint16 driftThresholdBps,
        uint16 maxSlippageBps,
        uint16 rewardBps
    );
    event TargetsSet(uint256 indexed id, uint16[] weightsBps);
    event Deposited(uint256 indexed id, address indexed token, uint256 amount);
    event Withdrawn(uint256 indexed id, address indexed token, uint256 amount);
    event Traded(
        uint256 indexed id, address indexed pool, address tokenIn, address tokenOut, uint256 amountIn, uint256 amountOut
    );
    event Rebalanced(
        uint256 indexed id, address indexed keeper, uint256 driftBefore, uint256 driftAfter, uint256 rewardValue
    );

    error InvalidBasket();
    error NotBasketOwner(uint256 id, address caller);
    error NotInBasket(uint256 id, address token);
    error InsufficientBalance(uint256 id, address token, uint256 requested, uint256 held);
    error DriftBelowThreshold(uint256 drift, uint256 threshold);
    error RebalanceIncomplete(uint256 driftAfter, uint256 threshold);
    error SlippageTooHigh(uint256 valueIn, uint256 valueOut, uint256 maxSlippageBps);
    error SwapShortfall(uint256 quoted, uint256 received);
    error NotOverweight(address token);
    error NotUnderweight(address token);
    error TradeTooLarge(address token, uint256 value, uint256 room);
    error BasketValueLost(uint256 valueBefore, uint256 valueAfter, uint256 maxSlippageBps);
    error UnsupportedToken(address token);

    /// @param owner_ Admin (meant to be a multisig): lists pools. Has no access to baskets.
    constructor(address owner_, IPriceOracle oracle_) PoolWhitelist(owner_) {
        oracle = oracle_;
    }

    /// @notice Creates a basket owned by the caller.
    /// @param weightsBps Target weights by value, summing to 10_000.
    function createBasket(
        address[] calldata tokens,
        uint16[] calldata weightsBps,
        uint16 driftThresholdBps,
        uint16 maxSlippageBps,
        uint16 rewardBps
    ) external returns (uint256 id) {
        uint256 n = tokens.length;
        if (
            n < 2 || n > MAX_TOKENS || weightsBps.length != n || driftThresholdBps == 0 || driftThresholdBps > BPS
                || maxSlippageBps > 1_000 || rewardBps > MAX_REWARD_BPS
        ) revert InvalidBasket();
        _checkWeights(weightsBps);
        for (uint256 i; i < n; ++i) {
            for (uint256 j; j < i; ++j) {
                if (tokens[i] == tokens[j]) revert InvalidBasket();
            }
            if (_unit[tokens[i]] == 0) _unit[tokens[i]] = 10 ** IERC20Metadata(tokens[i]).decimals();
        }
        id = ++basketCount;
        _baskets[id] = Basket(msg.sender, driftThresholdBps, maxSlippageBps, rewardBps, tokens, weightsBps);
        emit BasketCreated(id, msg.sender, tokens, weightsBps, driftThresholdBps, maxSlippageBps, rewardBps);
    }

    /// @notice Changes a basket's target weights.
    function setTargets(uint256 id, uint16[] calldata weightsBps) external {
        Basket storage b = _ownedBasket(id);
        if (weightsBps.length != b.tokens.length) revert InvalidBasket();
        _checkWeights(weightsBps);
        b.weightsBps = weightsBps;
        emit TargetsSet(id, weightsBps);
    }

    /// @notice Adds tokens to a basket.
    function deposit(uint256 id, address token, uint256 amount) external nonReentrant {
        _ownedBasket(id);
        _indexOf(id, token);
        // Baskets share the vault's balances: a token that delivers less than it was asked
        // to (fee on transfer) would make the vault owe more than it holds.
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        if (IERC20(token).balanceOf(address(this)) - before != amount) revert UnsupportedToken(token);
        balanceOf[id][token] += amount;
        emit Deposited(id, token, amount);
    }

    /// @notice Takes tokens out of a basket; always open to the owner.
    function withdraw(uint256 id, address token, uint256 amount, address to) external nonReentrant {
        _ownedBasket(id);
        uint256 held = balanceOf[id][token];
        if (amount > held) revert InsufficientBalance(id, token, amount, held);
        balanceOf[id][token] = held - amount;
        IERC20(token).safeTransfer(to, amount);
        emit Withdrawn(id, token, amount);
    }

    /// @notice A basket as stored.
    function getBasket(uint256 id) external view returns (Basket memory) {
        return _baskets[id];
    }

    /// @notice Largest distance of any weight from its target, in basis points, at oracle prices.
    function drift(uint256 id) public view returns (uint256) {
        Basket storage b = _baskets[id];
        uint256 n = b.tokens.length;
        uint256[] memory prices = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            prices[i] = oracle.getPrice(b.tokens[i]);
        }
        return _drift(id, b, prices);
    }

    /// @notice Rebalances a drifted basket with keeper-chosen trades. Each trade sells a token
    /// that is over its target into one that is under it, by at most the value that closes
    /// either's distance to target, at no worse than the oracle value less maxSlippage.
    /// @return rewardValue Oracle value (USD, 1e18) of the reward paid to the caller.
    function rebalance(uint256 id, Trade[] calldata trades) external nonReentrant returns (uint256 rewardValue) {
        Basket storage b = _baskets[id];
        if (b.owner == address(0)) revert InvalidBasket();
        Book memory bk = _book(id, b);
        uint256 before = _drift(id, b, bk.prices);
        if (before < b.driftThresholdBps) revert DriftBelowThreshold(before, b.driftThresholdBps);
        for (uint256 i; i < trades.length; ++i) {
            rewardValue += _trade(id, b, bk, trades[i]);
        }
        uint256 afterDrift = _drift(id, b, bk.prices);
        if (afterDrift >= b.driftThresholdBps) revert RebalanceIncomplete(afterDrift, b.driftThresholdBps);
        uint256 valueAfter = _total(id, b, bk.prices);
        if (valueAfter * BPS < bk.valueBefore * (BPS - b.maxSlippageBps)) {
            revert BasketValueLost(bk.valueBefore, valueAfter, b.maxSlippageBps);
        }
        emit Rebalanced(id, msg.sender, before, afterDrift, rewardValue);
    }

    /// @dev Prices once per call, and each token's side and room from its distance to target.
    function _book(uint256 id, Basket storage b) private view returns (Book memory bk) {
        uint256 n = b.tokens.length;
        bk.prices = new uint256[](n);
        bk.room = new uint256[](n);
        bk.seller = new bool[](n);
        uint256[] memory values = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            address token = b.tokens[i];
            bk.prices[i] = oracle.getPrice(token);
            values[i] = _valueAt(token, balanceOf[id][token], bk.prices[i]);
            bk.valueBefore += values[i];
        }
        for (uint256 i; i < n; ++i) {
            uint256 target = (bk.valueBefore * b.weightsBps[i]) / BPS;
            bk.seller[i] = values[i] > target;
            bk.room[i] = bk.seller[i] ? values[i] - target : target - values[i];
        }
    }

    function _trade(uint256 id, Basket storage b, Book memory bk, Trade calldata t)
        private
        returns (uint256 rewardValue)
    {
        (address tokenOut, uint256 j, uint256 quoted) = _debit(id, b, bk, t);
        uint256 received = _swap(ILiquidityPool(t.pool), t.tokenIn, t.amountIn, tokenOut, quoted);
        emit Traded(id, t.pool, t.tokenIn, tokenOut, t.amountIn, received);
        // Credited after the swap because only then is it known; every function that moves a
        // basket's balances holds the same reentrancy lock.
        // slither-disable-next-line reentrancy-no-eth
        return _credit(id, b, bk, tokenOut, j, received);
    }

    /// @dev Checks a trade's sides, room and oracle slippage, and takes its input off the basket.
    function _debit(uint256 id, Basket storage b, Book memory bk, Trade calldata t)
        private
        returns (address tokenOut, uint256 j, uint256 quoted)
    {
        if (!isPool[t.pool]) revert PoolNotAllowed(t.pool);
        uint256 i = _indexOf(id, t.tokenIn);
        if (!bk.seller[i]) revert NotOverweight(t.tokenIn);
        uint256 held = balanceOf[id][t.tokenIn];
        if (t.amountIn > held) revert InsufficientBalance(id, t.tokenIn, t.amountIn, held);
        (quoted, tokenOut) = ILiquidityPool(t.pool).getAmountOut(t.amountIn, t.tokenIn);
        j = _indexOf(id, tokenOut);
        if (bk.seller[j]) revert NotUnderweight(tokenOut);
        uint256 valueIn = _valueAt(t.tokenIn, t.amountIn, bk.prices[i]);
        if (valueIn > bk.room[i]) revert TradeTooLarge(t.tokenIn, valueIn, bk.room[i]);
        bk.room[i] -= valueIn;
        uint256 valueOut = _valueAt(tokenOut, quoted, bk.prices[j]);
        if (valueOut * BPS < valueIn * (BPS - b.maxSlippageBps)) {
            revert SlippageTooHigh(valueIn, valueOut, b.maxSlippageBps);
        }
        balanceOf[id][t.tokenIn] = held - t.amountIn;
    }

    /// @dev What was bought closes tokenOut's distance to target: that is the drift removed,
    /// and the reward is the basket's share of it.
    function _credit(uint256 id, Basket storage b, Book memory bk, address tokenOut, uint256 j, uint256 received)
        private
        returns (uint256 rewardValue)
    {
        uint256 bought = _valueAt(tokenOut, received, bk.prices[j]);
        if (bought > bk.room[j]) revert TradeTooLarge(tokenOut, bought, bk.room[j]);
        bk.room[j] -= bought;
        uint256 reward = (received * b.rewardBps) / BPS;
        balanceOf[id][tokenOut] += received - reward;
        if (reward != 0) {
            IERC20(tokenOut).safeTransfer(msg.sender, reward);
            rewardValue = _valueAt(tokenOut, reward, bk.prices[j]);
        }
    }

    /// @dev Pays the pool, takes `quoted` of tokenOut, and returns what arrived.
    function _swap(ILiquidityPool pool, address tokenIn, uint256 amountIn, address tokenOut, uint256 quoted)
        private
        returns (uint256 received)
    {
        // The vault's balance of tokenOut changes only through this swap: every function that
        // moves the vault's tokens holds the same reentrancy lock.
        // slither-disable-next-line reentrancy-balance
        uint256 start = IERC20(tokenOut).balanceOf(address(this));
        IERC20(tokenIn).safeTransfer(address(pool), amountIn);
        if (tokenOut < tokenIn) pool.swap(quoted, 0, address(this), "");
        else pool.swap(0, quoted, address(this), "");
        // slither-disable-next-line reentrancy-balance
        received = IERC20(tokenOut).balanceOf(address(this)) - start;
        if (received < quoted) revert SwapShortfall(quoted, received);
    }

    function _drift(uint256 id, Basket storage b, uint256[] memory prices) private view returns (uint256 maxDrift) {
        uint256 n = b.tokens.length;
        uint256[] memory values = new uint256[](n);
        uint256 total = 0;
        for (uint256 i; i < n; ++i) {
            values[i] = _valueAt(b.tokens[i], balanceOf[id][b.tokens[i]], prices[i]);
            total += values[i];
        }
        // Strict equality on basket balances (own accounting): no transfer can move them.
        // slither-disable-next-line incorrect-equality
        if (total == 0) return 0;
        for (uint256 i; i < n; ++i) {
            uint256 w = (values[i] * BPS) / total;
            uint256 target = b.weightsBps[i];
            uint256 d = w > target ? w - target : target - w;
            if (d > maxDrift) maxDrift = d;
        }
    }

    function _total(uint256 id, Basket storage b, uint256[] memory prices) private view returns (uint256 total) {
        for (uint256 i; i < b.tokens.length; ++i) {
            total += _valueAt(b.tokens[i], balanceOf[id][b.tokens[i]], prices[i]);
        }
    }

    function _valueAt(address token, uint256 amount, uint256 price) private view returns (uint256) {
        return Math.mulDiv(amount, price, _unit[token]);
    }

    function _ownedBasket(uint256 id) private view returns (Basket storage b) {
        b = _baskets[id];
        if (b.owner != msg.sender) revert NotBasketOwner(id, msg.sender);
    }

    function _indexOf(uint256 id, address token) private view returns (uint256) {
        address[] storage tokens = _baskets[id].tokens;
        for (uint256 i; i < tokens.length; ++i) {
            if (tokens[i] == token) return i;
        }
        revert NotInBasket(id, token);
    }

    function _checkWeights(uint16[] calldata weightsBps) private pure {
        uint256 sum = 0;
        for (uint256 i; i < weightsBps.length; ++i) {
            sum += weightsBps[i];
        }
        if (sum != BPS) revert InvalidBasket();
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
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
/// its targets passes its threshold, anyone may rebalance it through listed pools: every
/// trade must get at least the oracle value less the basket's slippage bound, the basket
/// must end under its threshold, and the caller earns the basket's reward on what it bought.
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

    /// @param owner_ Admin (meant to be a multisig): lists pools. Has no access to baskets.
    constructor(address owner_, IPriceOracle oracle_) Ownable(owner_) {
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
        balanceOf[id][token] += amount;
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
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
    function drift(uint256 id) public view returns (uint256 maxDrift) {
        Basket storage b = _baskets[id];
        uint256 n = b.tokens.length;
        uint256[] memory values = new uint256[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            values[i] = _value(b.tokens[i], balanceOf[id][b.tokens[i]]);
            total += values[i];
        }
        if (total == 0) return 0;
        for (uint256 i; i < n; ++i) {
            uint256 w = (values[i] * BPS) / total;
            uint256 target = b.weightsBps[i];
            uint256 d = w > target ? w - target : target - w;
            if (d > maxDrift) maxDrift = d;
        }
    }

    /// @notice Rebalances a drifted basket with keeper-chosen trades, each bounded by the oracle.
    /// @return rewardValue Oracle value (USD, 1e18) of the rewards paid to the caller.
    function rebalance(uint256 id, Trade[] calldata trades) external nonReentrant returns (uint256 rewardValue) {
        Basket storage b = _baskets[id];
        if (b.owner == address(0)) revert InvalidBasket();
        uint256 before = drift(id);
        if (before < b.driftThresholdBps) revert DriftBelowThreshold(before, b.driftThresholdBps);
        for (uint256 i; i < trades.length; ++i) {
            rewardValue += _trade(id, b, trades[i]);
        }
        uint256 afterDrift = drift(id);
        if (afterDrift >= b.driftThresholdBps) revert RebalanceIncomplete(afterDrift, b.driftThresholdBps);
        emit Rebalanced(id, msg.sender, before, afterDrift, rewardValue);
    }

    function _trade(uint256 id, Basket storage b, Trade calldata t) private returns (uint256 rewardValue) {
        if (!isPool[t.pool]) revert PoolNotAllowed(t.pool);
        _indexOf(id, t.tokenIn);
        uint256 held = balanceOf[id][t.tokenIn];
        if (t.amountIn > held) revert InsufficientBalance(id, t.tokenIn, t.amountIn, held);
        ILiquidityPool pool = ILiquidityPool(t.pool);
        (uint256 quoted, address tokenOut) = pool.getAmountOut(t.amountIn, t.tokenIn);
        _indexOf(id, tokenOut);
        uint256 valueIn = _value(t.tokenIn, t.amountIn);
        uint256 valueOut = _value(tokenOut, quoted);
        if (valueOut * BPS < valueIn * (BPS - b.maxSlippageBps)) {
            revert SlippageTooHigh(valueIn, valueOut, b.maxSlippageBps);
        }
        balanceOf[id][t.tokenIn] = held - t.amountIn;

        uint256 start = IERC20(tokenOut).balanceOf(address(this));
        IERC20(t.tokenIn).safeTransfer(t.pool, t.amountIn);
        if (tokenOut < t.tokenIn) pool.swap(quoted, 0, address(this), "");
        else pool.swap(0, quoted, address(this), "");
        uint256 received = IERC20(tokenOut).balanceOf(address(this)) - start;
        if (received < quoted) revert SwapShortfall(quoted, received);

        uint256 reward = (received * b.rewardBps) / BPS;
        balanceOf[id][tokenOut] += received - reward;
        emit Traded(id, t.pool, t.tokenIn, tokenOut, t.amountIn, received);
        if (reward != 0) {
            IERC20(tokenOut).safeTransfer(msg.sender, reward);
            rewardValue = _value(tokenOut, reward);
        }
    }

    function _value(address token, uint256 amount) private view returns (uint256) {
        if (amount == 0) return 0;
        return Math.mulDiv(amount, oracle.getPrice(token), _unit[token]);
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
        uint256 sum;
        for (uint256 i; i < weightsBps.length; ++i) {
            sum += weightsBps[i];
        }
        if (sum != BPS) revert InvalidBasket();
    }
}

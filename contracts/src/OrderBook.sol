// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ILiquidityPool} from "./interfaces/ILiquidityPool.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";
import {PoolWhitelist} from "./PoolWhitelist.sol";

/// @title OrderBook
/// @notice Escrowed on-chain orders (limit, stop-loss, take-profit, TWAP, iceberg) that any
/// keeper may fill through whitelisted pools. The contract, not the keeper, enforces every
/// limit: a fill is checked against the order's own minimum output after the keeper fee.
/// @dev Same-market orders in one fill group share one swap (aggregate in, split out pro
/// rata). An order is two slots (owner|remaining, terms) plus one parameter slot that only
/// non-limit orders write. TWAP slices derive from the amount and slice count; an iceberg's
/// visible clip is min(clip, remaining) and needs no refill write.
contract OrderBook is PoolWhitelist, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    enum OrderType {
        Limit,
        StopLoss,
        TakeProfit,
        Twap,
        Iceberg
    }

    /// @notice Why an order in a batch was passed over (the rest of the batch goes on).
    enum SkipReason {
        NotOpen,
        WrongMarket,
        Expired,
        NotTriggered,
        SliceNotDue,
        OracleUnavailable,
        LimitNotMet,
        BadRoute,
        NotAscending
    }

    struct Order {
        // slot 0
        address owner;
        uint96 remaining; // tokenIn still escrowed and unfilled
        // slot 1
        uint96 amountIn; // original size
        uint96 minAmountOut; // for the whole amountIn, after keeper fee: the limit price
        uint32 expiry;
        uint16 market;
        OrderType kind;
        uint8 keeperFeeBps;
        // slot 2 (non-limit orders only)
        uint128 triggerOrClip; // stop/take-profit: oracle rate (tokenOut per tokenIn, 1e18); iceberg: clip
        uint32 nextSliceAt; // TWAP: earliest time of the next slice
        uint32 interval; // TWAP: seconds between slices
        uint16 slices; // TWAP: slice count
        bool armed; // stop/take-profit: trigger has been crossed
    }

    struct PlaceParams {
        uint16 market;
        OrderType kind;
        uint96 amountIn;
        uint96 minAmountOut;
        uint32 expiry; // 0 = good till cancelled
        uint8 keeperFeeBps;
        uint128 triggerOrClip;
        uint32 start; // TWAP: time of the first slice
        uint32 interval;
        uint16 slices;
    }

    struct Market {
        address tokenIn;
        address tokenOut;
    }

    /// @notice Orders of one market filled through one route with one swap.
    struct FillGroup {
        uint16 market;
        address[] path; // pools from tokenIn to tokenOut
        uint256[] orderIds; // strictly ascending
        uint256[] amounts; // optional per-order input cap (limit, stop, take-profit, iceberg); empty or 0 = most allowed
    }

    struct Pending {
        uint256 id;
        address owner;
        uint256 fillIn;
        uint256 amountIn;
        uint256 minOut;
        uint256 feeBps;
        uint256 remainingAfter;
        bool included;
    }

    uint256 public constant MAX_KEEPER_FEE_BPS = 100;
    uint256 private constant BPS = 10_000;

    IPriceOracle public immutable oracle;

    address public guardian;
    uint256 public nextOrderId = 1;
    uint16 public marketCount;

    mapping(uint256 id => Order) private _orders;
    mapping(uint16 id => Market) private _markets;
    mapping(address tokenIn => mapping(address tokenOut => uint16 id)) public marketOf;
    mapping(bytes32 commitment => uint256 blockNumber) public commitments;

    event MarketRegistered(uint16 indexed market, address indexed tokenIn, address indexed tokenOut);
    /// @dev `params.expiry == 0` means good till cancelled.
    event OrderPlaced(uint256 indexed id, address indexed owner, uint16 indexed market, PlaceParams params);
    event OrderCommitted(bytes32 indexed commitment, address indexed committer);
    event OrderArmed(uint256 indexed id, uint256 oracleRate);
    event OrderFilled(
        uint256 indexed id, address indexed keeper, uint256 amountIn, uint256 amountOut, uint256 keeperFee, uint256 remaining
    );
    event OrderSkipped(uint256 indexed id, SkipReason reason);
    event OrderCancelled(uint256 indexed id, uint256 refunded);
    event OrderExpired(uint256 indexed id, uint256 refunded);
    event GuardianSet(address indexed guardian);

    error UnknownMarket(uint16 market);
    error InvalidMarket();
    error TooManyMarkets();
    error ZeroAmount();
    error ZeroMinAmountOut();
    error KeeperFeeTooHigh(uint256 feeBps, uint256 maxBps);
    error ExpiryInPast(uint256 expiry);
    error InvalidTrigger();
    error InvalidTwap();
    error InvalidClip();
    error UnsupportedToken(address token);
    error NotOrderOwner(uint256 id, address caller);
    error OrderNotOpen(uint256 id);
    error OrderNotExpired(uint256 id);
    error NotGuardian(address caller);
    error CommitmentExists(bytes32 commitment);
    error CommitmentNotFound(bytes32 commitment);
    error RevealTooEarly(bytes32 commitment);
    error LengthMismatch();
    error SwapShortfall(uint256 quoted, uint256 received);
    error LimitViolated(uint256 id);
    error TooFewFilled(uint256 filled, uint256 minFilled);

    /// @param owner_ Admin (meant to be a multisig): lists pools, sets the guardian, unpauses.
    /// @param oracle_ Oracle that arms stop-loss and take-profit orders.
    constructor(address owner_, IPriceOracle oracle_) Ownable(owner_) {
        oracle = oracle_;
    }

    // ----------------------------------------------------------------- admin

    /// @notice Sets the guardian, who may pause (only the owner unpauses).
    function setGuardian(address guardian_) external onlyOwner {
        guardian = guardian_;
        emit GuardianSet(guardian_);
    }

    /// @notice Stops placement and fills; cancel and expiry refunds keep working.
    function pause() external {
        if (msg.sender != guardian && msg.sender != owner()) revert NotGuardian(msg.sender);
        _pause();
    }

    /// @notice Resumes placement and fills.
    function unpause() external onlyOwner {
        _unpause();
    }

    // ---------------------------------------------------------------- markets

    /// @notice Registers the market tokenIn -> tokenOut (permissionless, once per pair direction).
    function registerMarket(address tokenIn, address tokenOut) external returns (uint16 id) {
        if (tokenIn == address(0) || tokenOut == address(0) || tokenIn == tokenOut) revert InvalidMarket();
        id = marketOf[tokenIn][tokenOut];
        if (id != 0) return id;
        if (marketCount == type(uint16).max) revert TooManyMarkets();
        id = ++marketCount;
        _markets[id] = Market(tokenIn, tokenOut);
        marketOf[tokenIn][tokenOut] = id;
        emit MarketRegistered(id, tokenIn, tokenOut);
    }

    /// @notice The tokens of a market.
    function getMarket(uint16 id) external view returns (Market memory) {
        return _markets[id];
    }

    // -------------------------------------------------------------- placement

    /// @notice Places an order, escrowing `amountIn` of the market's input token.
    /// @return id The new order's id.
    function placeOrder(PlaceParams calldata p) external whenNotPaused nonReentrant returns (uint256 id) {
        return _place(msg.sender, p);
    }

    /// @notice First half of commit-reveal placement: publishes only a hash of the terms.
    /// @param commitment `commitmentOf(msg.sender, params, salt)`.
    function commitOrder(bytes32 commitment) external whenNotPaused {
        if (commitments[commitment] != 0) revert CommitmentExists(commitment);
        commitments[commitment] = block.number;
        emit OrderCommitted(commitment, msg.sender);
    }

    /// @notice Second half: reveals the terms (at least one block after the commit) and places the order.
    function revealOrder(PlaceParams calldata p, bytes32 salt) external whenNotPaused nonReentrant returns (uint256) {
        bytes32 c = commitmentOf(msg.sender, p, salt);
        uint256 committedAt = commitments[c];
        if (committedAt == 0) revert CommitmentNotFound(c);
        if (committedAt >= block.number) revert RevealTooEarly(c);
        delete commitments[c];
        return _place(msg.sender, p);
    }

    /// @notice The commitment for an order's terms.
    function commitmentOf(address owner_, PlaceParams calldata p, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(owner_, p, salt));
    }

    /// @notice Cancels an order and refunds everything unfilled. Works while paused.
    function cancelOrder(uint256 id) external nonReentrant {
        Order storage o = _orders[id];
        address owner_ = o.owner;
        if (owner_ != msg.sender) revert NotOrderOwner(id, msg.sender);
        uint256 refund = o.remaining;
        address tokenIn = _markets[o.market].tokenIn;
        delete _orders[id];
        if (refund != 0) IERC20(tokenIn).safeTransfer(owner_, refund);
        emit OrderCancelled(id, refund);
    }

    /// @notice Refunds expired orders to their owners (anyone may call). Works while paused.
    function refundExpired(uint256[] calldata ids) external nonReentrant {
        for (uint256 i; i < ids.length; ++i) {
            uint256 id = ids[i];
            Order storage o = _orders[id];
            address owner_ = o.owner;
            if (owner_ == address(0)) revert OrderNotOpen(id);
            if (block.timestamp <= o.expiry) revert OrderNotExpired(id);
            uint256 refund = o.remaining;
            address tokenIn = _markets[o.market].tokenIn;
            delete _orders[id];
            IERC20(tokenIn).safeTransfer(owner_, refund);
            emit OrderExpired(id, refund);
        }
    }

    /// @notice An order as stored; an all-zero order is closed (filled, cancelled or refunded).
    function getOrder(uint256 id) external view returns (Order memory) {
        return _orders[id];
    }

    // -------------------------------------------------------------- execution

    /// @notice Fills orders group by group; an order that cannot be filled is skipped with
    /// `OrderSkipped(id, reason)` and the rest go on. Keeper fees go to `feeRecipient`.
    /// @return filled How many order fills were made.
    function executeBatch(FillGroup[] calldata groups, address feeRecipient)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 filled)
    {
        return _executeBatch(groups, feeRecipient);
    }

    /// @notice executeBatch that reverts unless at least `minFilled` fills were made. A keeper
    /// that loses a race for the same orders then reverts instead of landing a no-op, and a
    /// bundle that reverts is not included: the loser pays nothing.
    function executeBatchAtLeast(FillGroup[] calldata groups, address feeRecipient, uint256 minFilled)
        external
        whenNotPaused
        nonReentrant
        returns (uint256 filled)
    {
        filled = _executeBatch(groups, feeRecipient);
        if (filled < minFilled) revert TooFewFilled(filled, minFilled);
    }

    function _executeBatch(FillGroup[] calldata groups, address feeRecipient) private returns (uint256 filled) {
        for (uint256 g; g < groups.length; ++g) {
            filled += _executeGroup(groups[g], feeRecipient);
        }
    }

    function _executeGroup(FillGroup calldata grp, address feeRecipient) private returns (uint256) {
        Market memory m = _markets[grp.market];
        if (m.tokenIn == address(0)) revert UnknownMarket(grp.market);
        (Pending[] memory pend, uint256 sumIn) = _admitAll(grp, m);
        if (sumIn == 0) return 0;

        (uint256 quoted, bool routeOk) = _quote(grp.path, m.tokenIn, m.tokenOut, sumIn);
        if (!routeOk) {
            _skipIncluded(pend, SkipReason.BadRoute);
            return 0;
        }
        // Orders whose limit the aggregate price misses drop out; a smaller aggregate only
        // improves the average price, so one re-quote settles the set.
        uint256 droppedIn = _dropUnderLimit(pend, quoted, sumIn);
        if (droppedIn != 0) {
            sumIn -= droppedIn;
            if (sumIn == 0) return 0;
            (quoted,) = _quote(grp.path, m.tokenIn, m.tokenOut, sumIn);
        }

        // Effects before the swap and transfers.
        for (uint256 i; i < pend.length; ++i) {
            if (pend[i].included) _applyFill(pend[i]);
        }
        uint256 received = _swapAlong(grp.path, m.tokenIn, m.tokenOut, sumIn);
        if (received < quoted) revert SwapShortfall(quoted, received);
        return _distribute(pend, IERC20(m.tokenOut), received, sumIn, feeRecipient);
    }

    function _admitAll(FillGroup calldata grp, Market memory m)
        private
        returns (Pending[] memory pend, uint256 sumIn)
    {
        uint256 n = grp.orderIds.length;
        bool capped = grp.amounts.length != 0;
        if (capped && grp.amounts.length != n) revert LengthMismatch();
        pend = new Pending[](n);
        uint256 rate; // oracle rate, read once per group when a stop order needs it
        uint256 lastId;
        for (uint256 i; i < n; ++i) {
            uint256 id = grp.orderIds[i];
            pend[i].id = id;
            if (id <= lastId) {
                emit OrderSkipped(id, SkipReason.NotAscending);
                continue;
            }
            lastId = id;
            SkipReason reason;
            bool ok;
            (ok, reason, rate) = _admit(id, grp.market, capped ? grp.amounts[i] : 0, m, rate, pend[i]);
            if (ok) sumIn += pend[i].fillIn;
            else emit OrderSkipped(id, reason);
        }
    }

    function _dropUnderLimit(Pending[] memory pend, uint256 quoted, uint256 sumIn) private returns (uint256 dropped) {
        for (uint256 i; i < pend.length; ++i) {
            Pending memory p = pend[i];
            if (p.included && !_meetsLimit(p, (quoted * p.fillIn) / sumIn)) {
                p.included = false;
                dropped += p.fillIn;
                emit OrderSkipped(p.id, SkipReason.LimitNotMet);
            }
        }
    }

    /// @dev Loads and checks one order; fills `p` and says how much of it this batch may take.
    function _admit(uint256 id, uint16 market, uint256 want, Market memory m, uint256 rate, Pending memory p)
        private
        returns (bool, SkipReason, uint256)
    {
        Order storage o = _orders[id];
        uint256 remaining = o.remaining;
        if (remaining == 0) return (false, SkipReason.NotOpen, rate);
        if (o.market != market) return (false, SkipReason.WrongMarket, rate);
        if (block.timestamp > o.expiry) return (false, SkipReason.Expired, rate);
        OrderType kind = o.kind;
        uint256 fillIn = remaining;
        if (kind == OrderType.StopLoss || kind == OrderType.TakeProfit) {
            if (!o.armed) {
                if (rate == 0) {
                    rate = _oracleRate(m);
                    if (rate == 0) return (false, SkipReason.OracleUnavailable, rate);
                }
                uint256 trigger = o.triggerOrClip;
                bool crossed = kind == OrderType.StopLoss ? rate <= trigger : rate >= trigger;
                if (!crossed) return (false, SkipReason.NotTriggered, rate);
                // Once armed a stop stays armed, as a triggered stop becomes a market order.
                o.armed = true;
                emit OrderArmed(id, rate);
            }
        } else if (kind == OrderType.Twap) {
            if (block.timestamp < o.nextSliceAt) return (false, SkipReason.SliceNotDue, rate);
            uint256 slice = o.amountIn / o.slices;
            // The last slice takes the division remainder.
            if (remaining >= 2 * slice) fillIn = slice;
            want = 0;
        } else if (kind == OrderType.Iceberg) {
            uint256 clip = o.triggerOrClip;
            if (fillIn > clip) fillIn = clip;
        }
        if (want != 0 && want < fillIn) fillIn = want;
        p.owner = o.owner;
        p.fillIn = fillIn;
        p.amountIn = o.amountIn;
        p.minOut = o.minAmountOut;
        p.feeBps = o.keeperFeeBps;
        p.remainingAfter = remaining - fillIn;
        p.included = true;
        return (true, SkipReason.NotOpen, rate);
    }

    function _applyFill(Pending memory p) private {
        if (p.remainingAfter == 0) {
            delete _orders[p.id];
            return;
        }
        Order storage o = _orders[p.id];
        o.remaining = uint96(p.remainingAfter);
        if (o.kind == OrderType.Twap) o.nextSliceAt = uint32(block.timestamp) + o.interval;
    }

    function _distribute(Pending[] memory pend, IERC20 tokenOut, uint256 received, uint256 sumIn, address feeRecipient)
        private
        returns (uint256 filled)
    {
        uint256 lastIncluded;
        for (uint256 i = pend.length; i != 0; --i) {
            if (pend[i - 1].included) {
                lastIncluded = i - 1;
                break;
            }
        }
        uint256 paid;
        uint256 fees;
        for (uint256 i; i <= lastIncluded; ++i) {
            Pending memory p = pend[i];
            if (!p.included) continue;
            // The last order takes the rounding remainder so no output is stranded here.
            uint256 out = i == lastIncluded ? received - paid : (received * p.fillIn) / sumIn;
            paid += out;
            uint256 fee = (out * p.feeBps) / BPS;
            uint256 net = out - fee;
            if (net * p.amountIn < p.fillIn * p.minOut) revert LimitViolated(p.id);
            fees += fee;
            tokenOut.safeTransfer(p.owner, net);
            emit OrderFilled(p.id, msg.sender, p.fillIn, net, fee, p.remainingAfter);
            ++filled;
        }
        if (fees != 0) tokenOut.safeTransfer(feeRecipient, fees);
    }

    function _skipIncluded(Pending[] memory pend, SkipReason reason) private {
        for (uint256 i; i < pend.length; ++i) {
            if (pend[i].included) emit OrderSkipped(pend[i].id, reason);
        }
    }

    function _meetsLimit(Pending memory p, uint256 out) private pure returns (bool) {
        uint256 net = out - (out * p.feeBps) / BPS;
        return net * p.amountIn >= p.fillIn * p.minOut;
    }

    /// @dev tokenOut per tokenIn from the oracle (1e18), 0 when either price is unset or stale.
    function _oracleRate(Market memory m) private view returns (uint256) {
        (uint256 pIn, bool freshIn) = oracle.tryGetPrice(m.tokenIn);
        (uint256 pOut, bool freshOut) = oracle.tryGetPrice(m.tokenOut);
        if (!freshIn || !freshOut || pOut == 0) return 0;
        return (pIn * 1e18) / pOut;
    }

    /// @dev Quotes a route; false when a pool is not listed or the route does not end in tokenOut.
    function _quote(address[] calldata path, address tokenIn, address tokenOut, uint256 amountIn)
        private
        view
        returns (uint256 amount, bool ok)
    {
        if (path.length == 0) return (0, false);
        amount = amountIn;
        address token = tokenIn;
        for (uint256 i; i < path.length; ++i) {
            address pool = path[i];
            if (!isPool[pool]) return (0, false);
            try ILiquidityPool(pool).getAmountOut(amount, token) returns (uint256 out, address next) {
                amount = out;
                token = next;
            } catch {
                return (0, false);
            }
        }
        ok = token == tokenOut && amount != 0;
    }

    /// @dev Pays the first pool, chains each pool's output into the next, and returns what arrived here.
    function _swapAlong(address[] calldata path, address tokenIn, address tokenOut, uint256 amountIn)
        private
        returns (uint256)
    {
        uint256 before = IERC20(tokenOut).balanceOf(address(this));
        IERC20(tokenIn).safeTransfer(path[0], amountIn);
        uint256 amount = amountIn;
        address token = tokenIn;
        uint256 last = path.length - 1;
        for (uint256 i; i <= last; ++i) {
            (amount, token) = _hop(ILiquidityPool(path[i]), amount, token, i == last ? address(this) : path[i + 1]);
        }
        return IERC20(tokenOut).balanceOf(address(this)) - before;
    }

    function _hop(ILiquidityPool pool, uint256 amountIn, address tokenIn, address to)
        private
        returns (uint256 out, address next)
    {
        (out, next) = pool.getAmountOut(amountIn, tokenIn);
        // Pools keep token0 < token1, so the output side follows from the address order.
        if (next < tokenIn) pool.swap(out, 0, to, "");
        else pool.swap(0, out, to, "");
    }

    function _place(address owner_, PlaceParams calldata p) private returns (uint256 id) {
        Market memory m = _markets[p.market];
        if (m.tokenIn == address(0)) revert UnknownMarket(p.market);
        if (p.amountIn == 0) revert ZeroAmount();
        if (p.minAmountOut == 0) revert ZeroMinAmountOut();
        if (p.keeperFeeBps > MAX_KEEPER_FEE_BPS) revert KeeperFeeTooHigh(p.keeperFeeBps, MAX_KEEPER_FEE_BPS);
        uint32 expiry = p.expiry == 0 ? type(uint32).max : p.expiry;
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry);

        id = nextOrderId++;
        Order storage o = _orders[id];
        o.owner = owner_;
        o.remaining = p.amountIn;
        o.amountIn = p.amountIn;
        o.minAmountOut = p.minAmountOut;
        o.expiry = expiry;
        o.market = p.market;
        o.kind = p.kind;
        o.keeperFeeBps = p.keeperFeeBps;
        if (p.kind == OrderType.StopLoss || p.kind == OrderType.TakeProfit) {
            if (p.triggerOrClip == 0) revert InvalidTrigger();
            o.triggerOrClip = p.triggerOrClip;
        } else if (p.kind == OrderType.Twap) {
            if (p.slices < 2 || p.interval == 0 || p.amountIn / p.slices == 0) revert InvalidTwap();
            o.nextSliceAt = p.start;
            o.interval = p.interval;
            o.slices = p.slices;
        } else if (p.kind == OrderType.Iceberg) {
            if (p.triggerOrClip == 0 || p.triggerOrClip >= p.amountIn) revert InvalidClip();
            o.triggerOrClip = p.triggerOrClip;
        }

        // Fee-on-transfer and rebasing tokens would break the escrow accounting.
        IERC20 tokenIn = IERC20(m.tokenIn);
        uint256 before = tokenIn.balanceOf(address(this));
        tokenIn.safeTransferFrom(owner_, address(this), p.amountIn);
        if (tokenIn.balanceOf(address(this)) - before != p.amountIn) revert UnsupportedToken(m.tokenIn);

        emit OrderPlaced(id, owner_, p.market, p);
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {ILiquidityPool} from "./interfaces/ILiquidityPool.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";
import {PoolWhitelist} from "./PoolWhitelist.sol";

/// @title OrderBook
/// @notice Escrowed on-chain orders (limit, stop-loss, take-profit, TWAP, iceberg) that any
/// keeper may fill through whitelisted pools. The contract, not the keeper, enforces every
/// bound: a fill meets the order's own minimum output after the keeper fee, and its rate is
/// within the order's fairness tolerance of the oracle's rate, so no transaction, whoever
/// sends it, can fill an order far below fair value (a keeper sandwiching its own fill
/// included).
/// @dev Same-market orders in one fill group share one swap (aggregate in, split out pro
/// rata). Each group runs in its own call frame, so nothing one group does (a token that
/// reverts, a pool that misbehaves) can undo another group. An order is two slots (owner |
/// remaining, terms); a third holds the terms only some orders have (trigger, clip, TWAP
/// schedule, a time before which it may not fill, a tolerance override) and is read only for
/// those. TWAP slices derive from what is left and the slices left; an iceberg's visible clip
/// is min(clip, remaining) and needs no refill write.
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
        NotDue, // TWAP slice before its time, a second iceberg clip or a reveal in the same block
        OracleUnavailable,
        LimitNotMet,
        BadRoute,
        NotAscending,
        UnfairPrice // the route pays more than the order's tolerance below the oracle's rate
    }

    /// @notice An order as `getOrder` shows it.
    struct Order {
        address owner;
        uint96 remaining; // tokenIn still escrowed and unfilled
        uint96 amountIn; // original size
        uint96 minAmountOut; // for the whole amountIn, after keeper fee: the limit price
        uint32 expiry;
        uint16 market;
        OrderType kind;
        uint8 keeperFeeBps;
        uint128 triggerOrClip; // stop/take-profit: oracle rate (tokenOut per tokenIn, whole tokens, 1e18); iceberg: clip
        uint32 notBefore; // no fill before this time: next TWAP slice, next iceberg clip, reveal block + 1
        uint32 interval; // TWAP: seconds between slices
        uint16 slices; // TWAP: slices left
        bool armed; // stop/take-profit: trigger has been crossed
        uint16 toleranceBps; // fairness tolerance; 0 = the market's
    }

    /// @dev Storage form of Order: `kindBits` is the kind with EXTENDED set when slot 2 holds
    /// terms a limit order would otherwise not have (a tolerance override or a reveal block).
    struct Stored {
        // slot 0
        address owner;
        uint96 remaining;
        // slot 1
        uint96 amountIn;
        uint96 minAmountOut;
        uint32 expiry;
        uint16 market;
        uint8 kindBits;
        uint8 keeperFeeBps;
        // slot 2: every kind but a plain limit order
        uint128 triggerOrClip;
        uint32 notBefore;
        uint32 interval;
        uint16 slices;
        bool armed;
        uint16 toleranceBps;
    }

    struct PlaceParams {
        uint16 market;
        OrderType kind;
        uint96 amountIn;
        uint96 minAmountOut;
        uint32 expiry; // 0 = good till cancelled
        uint8 keeperFeeBps;
        uint128 triggerOrClip; // stop/take-profit trigger or iceberg clip; 0 otherwise
        uint32 start; // TWAP: time of the first slice; 0 otherwise
        uint32 interval; // TWAP; 0 otherwise
        uint16 slices; // TWAP; 0 otherwise
        uint16 toleranceBps; // 0 = the market's tolerance; 10_000 = the limit alone, no oracle bound
    }

    struct Market {
        address tokenIn;
        address tokenOut;
        uint16 toleranceBps; // default fairness tolerance of the market's orders
        uint8 decimalsIn;
        uint8 decimalsOut;
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
        uint256 toleranceBps;
        uint256 remainingAfter;
        bool included;
    }

    /// @dev Oracle prices of a group's market, read once and only when a group needs them.
    struct Prices {
        bool read;
        bool fresh;
        uint256 pIn;
        uint256 pOut;
    }

    uint256 public constant MAX_KEEPER_FEE_BPS = 100;
    /// @notice A market's tolerance when it is registered.
    uint16 public constant DEFAULT_TOLERANCE_BPS = 300;
    uint32 public constant MAX_TWAP_INTERVAL = 30 days;
    uint32 public constant MAX_TWAP_START_DELAY = 365 days;
    uint16 public constant MAX_TWAP_SLICES = 1_000;
    /// @notice Gas a trader's payout may use; a token or owner that needs more (or reverts)
    /// gets its output credited to `claimable` instead of stopping the batch.
    uint256 public constant PAYOUT_GAS = 100_000;
    uint256 private constant BPS = 10_000;
    uint256 private constant MAX_DECIMALS = 36;
    uint8 private constant KIND_MASK = 0x07;
    uint8 private constant EXTENDED = 0x80;

    IPriceOracle public immutable oracle;

    /// @custom:security write-protection="onlyOwner()"
    address public guardian;
    uint256 public nextOrderId = 1;
    uint16 public marketCount;

    mapping(uint256 id => Stored) private _orders;
    mapping(uint16 id => Market) private _markets;
    mapping(address tokenIn => mapping(address tokenOut => uint16 id)) public marketOf;
    mapping(address committer => mapping(bytes32 commitment => uint256 blockNumber)) public commitments;
    /// @notice Output and refunds that could not be paid out (the owner could not receive them).
    mapping(address owner => mapping(address token => uint256 amount)) public claimable;

    event MarketRegistered(uint16 indexed market, address indexed tokenIn, address indexed tokenOut);
    event MarketToleranceSet(uint16 indexed market, uint16 toleranceBps);
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
    /// @notice A group of a batch reverted as a whole and was rolled back; `reason` is the
    /// revert's selector (the other groups went on).
    event GroupFailed(uint256 indexed index, bytes4 reason);
    event PayoutDeferred(address indexed owner, address indexed token, uint256 amount);
    event Claimed(address indexed owner, address indexed token, address to, uint256 amount);
    event GuardianSet(address indexed guardian);

    error UnknownMarket(uint16 market);
    error InvalidMarket();
    error MarketNotPriced(address token);
    error TooManyMarkets();
    error InvalidTolerance(uint256 toleranceBps);
    error ZeroAmount();
    error ZeroMinAmountOut();
    error KeeperFeeTooHigh(uint256 feeBps, uint256 maxBps);
    error ExpiryInPast(uint256 expiry);
    error InvalidTrigger();
    error InvalidTwap();
    error InvalidClip();
    error UnusedParam();
    error UnsupportedToken(address token);
    error NotOrderOwner(uint256 id, address caller);
    error NotGuardian(address caller);
    error OnlySelf();
    error CommitmentExists(bytes32 commitment);
    error CommitmentNotFound(bytes32 commitment);
    error RevealTooEarly(bytes32 commitment);
    error NothingToClaim(address token);
    error LengthMismatch();
    error SwapShortfall(uint256 quoted, uint256 received);
    error LimitViolated(uint256 id);
    error TooFewFilled(uint256 filled, uint256 minFilled);
    error OutOfGas();

    /// @param owner_ Admin (meant to be a multisig): lists pools and markets, sets tolerances
    /// and the guardian, unpauses.
    /// @param oracle_ Oracle that arms stop-loss and take-profit orders and bounds every fill.
    constructor(address owner_, IPriceOracle oracle_) PoolWhitelist(owner_) {
        oracle = oracle_;
    }

    // ----------------------------------------------------------------- admin

    /// @notice Sets the guardian, who may pause (only the owner unpauses).
    function setGuardian(address guardian_) external onlyOwner {
        guardian = guardian_;
        emit GuardianSet(guardian_);
    }

    /// @notice Stops placement and fills; cancel, expiry refunds and claims keep working.
    function pause() external {
        if (msg.sender != guardian && msg.sender != owner()) revert NotGuardian(msg.sender);
        _pause();
    }

    /// @notice Resumes placement and fills.
    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Sets a market's default fairness tolerance (orders may override it).
    /// @param toleranceBps 1..10_000; 10_000 lets orders fill on their limit alone (for
    /// tokens the oracle does not price).
    function setMarketTolerance(uint16 market, uint16 toleranceBps) external onlyOwner {
        if (_markets[market].tokenIn == address(0)) revert UnknownMarket(market);
        if (toleranceBps == 0 || toleranceBps > BPS) revert InvalidTolerance(toleranceBps);
        _markets[market].toleranceBps = toleranceBps;
        emit MarketToleranceSet(market, toleranceBps);
    }

    // ---------------------------------------------------------------- markets

    /// @notice Registers the market tokenIn -> tokenOut, once per direction. Anyone may
    /// register a pair of tokens the oracle prices; the owner may register any pair.
    function registerMarket(address tokenIn, address tokenOut) external returns (uint16 id) {
        if (tokenIn == address(0) || tokenOut == address(0) || tokenIn == tokenOut) revert InvalidMarket();
        id = marketOf[tokenIn][tokenOut];
        if (id != 0) return id;
        if (msg.sender != owner()) {
            _requirePriced(tokenIn);
            _requirePriced(tokenOut);
        }
        if (marketCount == type(uint16).max) revert TooManyMarkets();
        uint8 decIn = _decimals(tokenIn);
        uint8 decOut = _decimals(tokenOut);
        id = ++marketCount;
        _markets[id] = Market(tokenIn, tokenOut, DEFAULT_TOLERANCE_BPS, decIn, decOut);
        marketOf[tokenIn][tokenOut] = id;
        emit MarketRegistered(id, tokenIn, tokenOut);
        emit MarketToleranceSet(id, DEFAULT_TOLERANCE_BPS);
    }

    /// @notice A market's tokens, tolerance and decimals.
    function getMarket(uint16 id) external view returns (Market memory) {
        return _markets[id];
    }

    // -------------------------------------------------------------- placement

    /// @notice Places an order, escrowing `amountIn` of the market's input token.
    /// @return id The new order's id.
    function placeOrder(PlaceParams calldata p) external whenNotPaused nonReentrant returns (uint256 id) {
        return _place(msg.sender, p, false);
    }

    /// @notice First half of commit-reveal placement: publishes only a hash of the terms.
    /// Commitments are the sender's own: a copy sent by someone else blocks nothing.
    /// @param commitment `commitmentOf(msg.sender, params, salt)`.
    function commitOrder(bytes32 commitment) external whenNotPaused {
        if (commitments[msg.sender][commitment] != 0) revert CommitmentExists(commitment);
        commitments[msg.sender][commitment] = block.number;
        emit OrderCommitted(commitment, msg.sender);
    }

    /// @notice Second half: reveals the terms (at least one block after the commit) and places
    /// the order, which may be filled from the next block on (not in the reveal's own block).
    function revealOrder(PlaceParams calldata p, bytes32 salt) external whenNotPaused nonReentrant returns (uint256) {
        bytes32 c = commitmentOf(msg.sender, p, salt);
        uint256 committedAt = commitments[msg.sender][c];
        if (committedAt == 0) revert CommitmentNotFound(c);
        if (committedAt >= block.number) revert RevealTooEarly(c);
        delete commitments[msg.sender][c];
        return _place(msg.sender, p, true);
    }

    /// @notice The commitment for an order's terms.
    function commitmentOf(address owner_, PlaceParams calldata p, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(owner_, p, salt));
    }

    /// @notice Cancels an order and refunds everything unfilled. Works while paused.
    function cancelOrder(uint256 id) external nonReentrant {
        Stored storage o = _orders[id];
        address owner_ = o.owner;
        if (owner_ != msg.sender) revert NotOrderOwner(id, msg.sender);
        uint256 refund = o.remaining;
        address tokenIn = _markets[o.market].tokenIn;
        delete _orders[id];
        if (refund != 0) _pay(tokenIn, owner_, refund);
        emit OrderCancelled(id, refund);
    }

    /// @notice Refunds expired orders to their owners (anyone may call). Ids that are closed
    /// or not expired are passed over. Works while paused.
    /// @return refunded How many orders were refunded.
    function refundExpired(uint256[] calldata ids) external nonReentrant returns (uint256 refunded) {
        for (uint256 i; i < ids.length; ++i) {
            uint256 id = ids[i];
            Stored storage o = _orders[id];
            address owner_ = o.owner;
            if (owner_ == address(0) || block.timestamp <= o.expiry) continue;
            uint256 refund = o.remaining;
            address tokenIn = _markets[o.market].tokenIn;
            delete _orders[id];
            _pay(tokenIn, owner_, refund);
            emit OrderExpired(id, refund);
            ++refunded;
        }
    }

    /// @notice Pays out what could not be paid to the caller before, to `to`. Works while paused.
    function claim(address token, address to) external nonReentrant returns (uint256 amount) {
        amount = claimable[msg.sender][token];
        if (amount == 0) revert NothingToClaim(token);
        delete claimable[msg.sender][token];
        IERC20(token).safeTransfer(to, amount);
        emit Claimed(msg.sender, token, to, amount);
    }

    /// @notice An order as stored; an all-zero order is closed (filled, cancelled or refunded).
    function getOrder(uint256 id) external view returns (Order memory o) {
        Stored storage s = _orders[id];
        o.owner = s.owner;
        o.remaining = s.remaining;
        o.amountIn = s.amountIn;
        o.minAmountOut = s.minAmountOut;
        o.expiry = s.expiry;
        o.market = s.market;
        o.kind = OrderType(s.kindBits & KIND_MASK);
        o.keeperFeeBps = s.keeperFeeBps;
        o.triggerOrClip = s.triggerOrClip;
        o.notBefore = s.notBefore;
        o.interval = s.interval;
        o.slices = s.slices;
        o.armed = s.armed;
        o.toleranceBps = s.toleranceBps;
    }

    // -------------------------------------------------------------- execution

    /// @notice Fills orders group by group; an order that cannot be filled is skipped with
    /// `OrderSkipped(id, reason)`, a group that fails as a whole is rolled back with
    /// `GroupFailed(index, selector)`, and the rest go on. Keeper fees go to `feeRecipient`.
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

    /// @notice One group of a batch in its own call frame; only this contract may call it
    /// (from executeBatch, which holds the reentrancy lock and the pause check).
    /// @param keeper The batch's sender, named in `OrderFilled`.
    function fillGroup(FillGroup calldata grp, address feeRecipient, address keeper) external returns (uint256) {
        if (msg.sender != address(this)) revert OnlySelf();
        return _executeGroup(grp, feeRecipient, keeper);
    }

    function _executeBatch(FillGroup[] calldata groups, address feeRecipient) private returns (uint256 filled) {
        for (uint256 g; g < groups.length; ++g) {
            uint256 gasBefore = gasleft();
            try this.fillGroup(groups[g], feeRecipient, msg.sender) returns (uint256 n) {
                filled += n;
            } catch {
                // Only the selector is copied: a revert of any size costs the same here.
                bytes4 reason;
                // solhint-disable-next-line no-inline-assembly
                assembly ("memory-safe") {
                    if gt(returndatasize(), 3) {
                        returndatacopy(0, 0, 4)
                        reason := mload(0)
                    }
                }
                // A group that ran out of gas (here or in a call it made, each frame keeping
                // 1/64 back) failed for want of gas the sender did not give, not for anything
                // in it: the batch reverts, so eth_estimateGas finds what the whole batch needs
                // instead of the least gas at which a group fails quietly.
                if (reason == OutOfGas.selector || gasleft() <= gasBefore / 16) revert OutOfGas();
                emit GroupFailed(g, reason);
            }
        }
    }

    function _executeGroup(FillGroup calldata grp, address feeRecipient, address keeper) private returns (uint256) {
        Market memory m = _markets[grp.market];
        if (m.tokenIn == address(0)) revert UnknownMarket(grp.market);
        Prices memory px = Prices(false, false, 0, 0);
        (Pending[] memory pend, uint256 sumIn) = _admitAll(grp, m, px);
        if (sumIn == 0) return 0;

        // Orders whose limit or tolerance the aggregate price misses drop out, and the rest is
        // quoted again until every order left meets both on the quote it will get.
        uint256 quoted;
        while (true) {
            bool routeOk;
            (quoted, routeOk) = _quote(grp.path, m.tokenIn, m.tokenOut, sumIn);
            if (!routeOk) {
                _skipIncluded(pend, SkipReason.BadRoute);
                return 0;
            }
            uint256 dropped = _dropUnfit(pend, m, px, quoted, sumIn);
            if (dropped == 0) break;
            sumIn -= dropped;
            if (sumIn == 0) return 0;
        }

        // Effects before the swap and transfers.
        for (uint256 i; i < pend.length; ++i) {
            if (pend[i].included) _applyFill(pend[i]);
        }
        uint256 received = _swapAlong(grp.path, m.tokenIn, m.tokenOut, sumIn);
        if (received < quoted) revert SwapShortfall(quoted, received);
        return _distribute(pend, m.tokenOut, received, sumIn, feeRecipient, keeper);
    }

    function _admitAll(FillGroup calldata grp, Market memory m, Prices memory px)
        private
        returns (Pending[] memory pend, uint256 sumIn)
    {
        uint256 n = grp.orderIds.length;
        bool capped = grp.amounts.length != 0;
        if (capped && grp.amounts.length != n) revert LengthMismatch();
        pend = new Pending[](n);
        uint256 lastId = 0;
        for (uint256 i; i < n; ++i) {
            uint256 id = grp.orderIds[i];
            pend[i].id = id;
            if (id <= lastId) {
                emit OrderSkipped(id, SkipReason.NotAscending);
                continue;
            }
            lastId = id;
            (bool ok, SkipReason reason) = _admit(id, grp.market, capped ? grp.amounts[i] : 0, m, px, pend[i]);
            if (ok) sumIn += pend[i].fillIn;
            else emit OrderSkipped(id, reason);
        }
    }

    /// @dev Loads and checks one order; fills `p` and says how much of it this batch may take.
    function _admit(uint256 id, uint16 market, uint256 want, Market memory m, Prices memory px, Pending memory p)
        private
        returns (bool, SkipReason)
    {
        Stored storage o = _orders[id];
        uint256 remaining = o.remaining;
        if (remaining == 0) return (false, SkipReason.NotOpen);
        if (o.market != market) return (false, SkipReason.WrongMarket);
        if (block.timestamp > o.expiry) return (false, SkipReason.Expired);
        p.fillIn = remaining;
        p.toleranceBps = m.toleranceBps;
        uint8 bits = o.kindBits;
        if (bits != uint8(OrderType.Limit)) {
            SkipReason why = _admitTerms(id, o, OrderType(bits & KIND_MASK), m, px, p);
            if (why != SkipReason.NotOpen) return (false, why);
            if (OrderType(bits & KIND_MASK) == OrderType.Twap) want = 0;
        }
        if (want != 0 && want < p.fillIn) p.fillIn = want;
        p.owner = o.owner;
        p.amountIn = o.amountIn;
        p.minOut = o.minAmountOut;
        p.feeBps = o.keeperFeeBps;
        p.remainingAfter = remaining - p.fillIn;
        p.included = true;
        return (true, SkipReason.NotOpen);
    }

    /// @dev The slot-2 terms: not-before time, tolerance override, stop trigger, TWAP slice,
    /// iceberg clip. Returns NotOpen when the order may fill, else why not.
    function _admitTerms(uint256 id, Stored storage o, OrderType kind, Market memory m, Prices memory px, Pending memory p)
        private
        returns (SkipReason)
    {
        if (block.timestamp < o.notBefore) return SkipReason.NotDue;
        uint256 own = o.toleranceBps;
        if (own != 0) p.toleranceBps = own;
        if (kind == OrderType.StopLoss || kind == OrderType.TakeProfit) {
            if (!o.armed) return _arm(id, o, kind == OrderType.StopLoss, m, px);
        } else if (kind == OrderType.Twap) {
            // Slices left divide what is left, so the schedule runs exactly its slice count.
            uint256 left = o.slices;
            if (left > 1) p.fillIn /= left;
        } else if (kind == OrderType.Iceberg) {
            uint256 clip = o.triggerOrClip;
            if (p.fillIn > clip) p.fillIn = clip;
        }
        return SkipReason.NotOpen;
    }

    /// @dev Arms a stop whose trigger the oracle rate has crossed; returns NotOpen when armed,
    /// else why not.
    function _arm(uint256 id, Stored storage o, bool stopLoss, Market memory m, Prices memory px)
        private
        returns (SkipReason)
    {
        _readPrices(px, m);
        if (!px.fresh) return SkipReason.OracleUnavailable;
        uint256 rate = (px.pIn * 1e18) / px.pOut;
        uint256 trigger = o.triggerOrClip;
        if (stopLoss ? rate > trigger : rate < trigger) return SkipReason.NotTriggered;
        // Once armed a stop stays armed, as a triggered stop becomes a market order.
        o.armed = true;
        emit OrderArmed(id, rate);
        return SkipReason.NotOpen;
    }

    /// @dev Drops the orders the quote does not pay at their limit or within their tolerance
    /// of the oracle's rate; returns the input dropped.
    function _dropUnfit(Pending[] memory pend, Market memory m, Prices memory px, uint256 quoted, uint256 sumIn)
        private
        returns (uint256 dropped)
    {
        uint256 fair = 0; // oracle value of sumIn in tokenOut, computed when an order needs it
        for (uint256 i; i < pend.length; ++i) {
            Pending memory p = pend[i];
            if (!p.included) continue;
            SkipReason reason = SkipReason.LimitNotMet;
            bool fit = _meetsLimit(p, (quoted * p.fillIn) / sumIn);
            if (fit && p.toleranceBps < BPS) {
                _readPrices(px, m);
                if (!px.fresh) {
                    fit = false;
                    reason = SkipReason.OracleUnavailable;
                } else {
                    if (fair == 0) fair = _fairOut(m, px, sumIn);
                    if (quoted * BPS < fair * (BPS - p.toleranceBps)) {
                        fit = false;
                        reason = SkipReason.UnfairPrice;
                    }
                }
            }
            if (!fit) {
                p.included = false;
                dropped += p.fillIn;
                emit OrderSkipped(p.id, reason);
            }
        }
    }

    function _applyFill(Pending memory p) private {
        Stored storage o = _orders[p.id];
        uint8 bits = o.kindBits;
        if (p.remainingAfter == 0) {
            // A plain limit order never wrote slot 2: clearing it would cost a cold access.
            if (bits == uint8(OrderType.Limit)) {
                o.owner = address(0);
                o.remaining = 0;
                o.amountIn = 0;
                o.minAmountOut = 0;
                o.expiry = 0;
                o.market = 0;
                o.kindBits = 0;
                o.keeperFeeBps = 0;
            } else {
                delete _orders[p.id];
            }
            return;
        }
        o.remaining = uint96(p.remainingAfter);
        OrderType kind = OrderType(bits & KIND_MASK);
        if (kind == OrderType.Twap) {
            o.notBefore = uint32(block.timestamp) + o.interval;
            --o.slices;
        } else if (kind == OrderType.Iceberg) {
            // One clip per block, however many groups of a batch list the order.
            o.notBefore = uint32(block.timestamp) + 1;
        }
    }

    function _distribute(
        Pending[] memory pend,
        address tokenOut,
        uint256 received,
        uint256 sumIn,
        address feeRecipient,
        address keeper
    ) private returns (uint256 filled) {
        uint256 lastIncluded = 0;
        for (uint256 i = pend.length; i != 0; --i) {
            if (pend[i - 1].included) {
                lastIncluded = i - 1;
                break;
            }
        }
        uint256 paid = 0;
        uint256 fees = 0;
        for (uint256 i; i <= lastIncluded; ++i) {
            Pending memory p = pend[i];
            if (!p.included) continue;
            // The last order takes the rounding remainder so no output is stranded here.
            uint256 out = i == lastIncluded ? received - paid : (received * p.fillIn) / sumIn;
            paid += out;
            // The fee is the order's share of its own pro-rata output.
            // slither-disable-next-line divide-before-multiply
            uint256 fee = (out * p.feeBps) / BPS;
            uint256 net = out - fee;
            // Cannot fire: every order passed its limit on the final quote and received >= quoted.
            if (net * p.amountIn < p.fillIn * p.minOut) revert LimitViolated(p.id);
            fees += fee;
            _pay(tokenOut, p.owner, net);
            emit OrderFilled(p.id, keeper, p.fillIn, net, fee, p.remainingAfter);
            ++filled;
        }
        if (fees != 0) IERC20(tokenOut).safeTransfer(feeRecipient, fees);
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

    function _readPrices(Prices memory px, Market memory m) private view {
        if (px.read) return;
        px.read = true;
        (px.pIn, px.pOut, px.fresh) = oracle.tryGetPrices(m.tokenIn, m.tokenOut);
    }

    /// @dev What `amountIn` of tokenIn is worth in tokenOut at the oracle (raw units).
    function _fairOut(Market memory m, Prices memory px, uint256 amountIn) private pure returns (uint256) {
        return Math.mulDiv(amountIn, px.pIn * 10 ** m.decimalsOut, px.pOut * 10 ** m.decimalsIn);
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

    /// @dev Pays `owner`, or credits `claimable` when the transfer fails, returns false, or
    /// needs more than PAYOUT_GAS: an owner who cannot receive blocks only their own payout.
    function _pay(address token, address owner_, uint256 amount) private {
        uint256 before = gasleft();
        bool ok;
        // A bounded-gas call that reads at most one word back (a returndata bomb costs the
        // token, not us) and never reverts: Solidity's call would copy all of it.
        // solhint-disable-next-line no-inline-assembly
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, 0xa9059cbb00000000000000000000000000000000000000000000000000000000) // transfer(address,uint256)
            mstore(add(ptr, 4), owner_)
            mstore(add(ptr, 36), amount)
            // Success: the call returned true, or returned nothing from a contract (USDT style).
            ok := call(PAYOUT_GAS, token, 0, ptr, 68, 0, 32)
            if ok {
                switch returndatasize()
                case 0 { ok := gt(extcodesize(token), 0) }
                default { ok := and(gt(returndatasize(), 31), eq(mload(0), 1)) }
            }
        }
        if (!ok) {
            // A transfer that failed with less than PAYOUT_GAS to run on may have failed for want
            // of gas the sender did not give, not for the owner: the batch reverts, so no sender
            // can starve payouts into deferred ones.
            if (before - before / 64 < PAYOUT_GAS) revert OutOfGas();
            claimable[owner_][token] += amount;
            emit PayoutDeferred(owner_, token, amount);
        }
    }

    function _requirePriced(address token) private view {
        // Listed at all is what gates a market (a stale price comes back on the next update).
        // slither-disable-next-line unused-return
        (uint256 price,) = oracle.tryGetPrice(token);
        if (price == 0) revert MarketNotPriced(token);
    }

    function _decimals(address token) private view returns (uint8) {
        try IERC20Metadata(token).decimals() returns (uint8 d) {
            if (d > MAX_DECIMALS) revert InvalidMarket();
            return d;
        } catch {
            revert InvalidMarket();
        }
    }

    /// @dev Every parameter is bounded here, so nothing an order holds can fail a later batch.
    function _validate(PlaceParams calldata p) private view returns (uint32 expiry) {
        if (p.amountIn == 0) revert ZeroAmount();
        if (p.minAmountOut == 0) revert ZeroMinAmountOut();
        if (p.keeperFeeBps > MAX_KEEPER_FEE_BPS) revert KeeperFeeTooHigh(p.keeperFeeBps, MAX_KEEPER_FEE_BPS);
        if (p.toleranceBps > BPS) revert InvalidTolerance(p.toleranceBps);
        expiry = p.expiry == 0 ? type(uint32).max : p.expiry;
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry);
        OrderType kind = p.kind;
        if (kind == OrderType.StopLoss || kind == OrderType.TakeProfit) {
            if (p.triggerOrClip == 0) revert InvalidTrigger();
        } else if (kind == OrderType.Iceberg) {
            if (p.triggerOrClip == 0 || p.triggerOrClip >= p.amountIn) revert InvalidClip();
        } else if (p.triggerOrClip != 0) {
            revert UnusedParam();
        }
        if (kind == OrderType.Twap) {
            if (
                p.slices < 2 || p.slices > MAX_TWAP_SLICES || p.amountIn / p.slices == 0 || p.interval == 0
                    || p.interval > MAX_TWAP_INTERVAL || p.start > block.timestamp + MAX_TWAP_START_DELAY
            ) revert InvalidTwap();
        } else if (p.slices != 0 || p.interval != 0 || p.start != 0) {
            revert UnusedParam();
        }
    }

    function _place(address owner_, PlaceParams calldata p, bool revealed) private returns (uint256 id) {
        Market memory m = _markets[p.market];
        if (m.tokenIn == address(0)) revert UnknownMarket(p.market);
        uint32 expiry = _validate(p);
        OrderType kind = p.kind;
        id = nextOrderId;
        ++nextOrderId;
        Stored storage o = _orders[id];
        o.owner = owner_;
        o.remaining = p.amountIn;
        o.amountIn = p.amountIn;
        o.minAmountOut = p.minAmountOut;
        o.expiry = expiry;
        o.market = p.market;
        o.keeperFeeBps = p.keeperFeeBps;
        uint8 bits = uint8(kind);
        if (kind != OrderType.Limit || revealed || p.toleranceBps != 0) {
            if (kind == OrderType.Limit) bits |= EXTENDED;
            o.triggerOrClip = p.triggerOrClip;
            uint32 notBefore = revealed ? uint32(block.timestamp) + 1 : 0;
            if (kind == OrderType.Twap) {
                notBefore = p.start > notBefore ? p.start : notBefore;
                o.interval = p.interval;
                o.slices = p.slices;
            }
            o.notBefore = notBefore;
            o.toleranceBps = p.toleranceBps;
        }
        o.kindBits = bits;

        // Fee-on-transfer and rebasing tokens would break the escrow accounting.
        IERC20 tokenIn = IERC20(m.tokenIn);
        uint256 before = tokenIn.balanceOf(address(this));
        tokenIn.safeTransferFrom(owner_, address(this), p.amountIn);
        if (tokenIn.balanceOf(address(this)) - before != p.amountIn) revert UnsupportedToken(m.tokenIn);

        emit OrderPlaced(id, owner_, p.market, p);
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Fixture} from "../utils/Fixture.sol";
import {Test} from "../utils/Test.sol";
import {Vm} from "../utils/Vm.sol";
import {OrderBook} from "../../src/OrderBook.sol";
import {LiquidityPool} from "../../src/LiquidityPool.sol";
import {PriceOracle} from "../../src/PriceOracle.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";
import {Arbitrage} from "../utils/Arbitrage.sol";

/// @dev A USD token that refuses transfers to banned holders (a USDC-style blacklist): an
/// owner who cannot receive a market's output.
contract BannableToken is DevnetToken {
    mapping(address who => bool) public banned;

    constructor() DevnetToken("Bannable USD", "BUSD", 6) {}

    function ban(address who) external {
        banned[who] = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        require(!banned[to], "banned");
        super._update(from, to, value);
    }
}

/// @dev A hostile keeper: pushes a pool, fills through it, and pushes it back, in one call.
contract SandwichKeeper {
    function run(OrderBook book, OrderBook.FillGroup[] calldata groups, LiquidityPool pool, address tokenIn, uint256 push)
        external
    {
        uint256 out = _swap(pool, tokenIn, push);
        book.executeBatch(groups, address(this));
        _swap(pool, pool.token0() == tokenIn ? pool.token1() : pool.token0(), out);
    }

    function _swap(LiquidityPool pool, address tokenIn, uint256 amount) private returns (uint256 out) {
        if (amount == 0) return 0;
        address tokenOut;
        (out, tokenOut) = pool.getAmountOut(amount, tokenIn);
        if (out == 0) return 0;
        DevnetToken(tokenIn).mint(address(pool), amount);
        if (tokenOut < tokenIn) pool.swap(out, 0, address(this), "");
        else pool.swap(0, out, address(this), "");
    }
}

/// @notice Drives the book as a hostile world would: four markets (one paying out in a token
/// that refuses some owners), five pools with one- and two-hop routes, every order kind with
/// random terms and tolerances, commit-reveal, multi-group batches with duplicates, wrong
/// routes and amount caps, a keeper that sandwiches its own fills, pauses, oracle and pool
/// moves, time. Every order has its own owner, so balances tell each order's story. Runs with
/// fail_on_revert: a batch that reverts because of some order fails the run.
contract BookHandler is Test {
    uint256 private constant BPS = 10_000;
    bytes32 private constant FILLED = keccak256("OrderFilled(uint256,address,uint256,uint256,uint256,uint256)");
    bytes32 private constant GROUP_FAILED = keccak256("GroupFailed(uint256,bytes4)");

    struct Info {
        address owner;
        uint16 market;
        OrderBook.OrderType kind;
        uint16 slices;
        uint16 fills;
        uint64 lastFillBlock;
        uint64 revealBlock;
        bool closed;
    }

    struct Route {
        uint16 market;
        address[] path;
    }

    OrderBook public book;
    PriceOracle internal oracle;
    address internal admin;
    address internal updater;
    DevnetToken internal weth;
    DevnetToken internal usdc;
    DevnetToken internal dai;
    BannableToken public busd;
    LiquidityPool[] internal pools;
    uint16[] internal markets;
    Route[] internal routes;
    SandwichKeeper internal sandwich;

    uint256[] public ids;
    mapping(uint256 id => Info) public info;
    address[] public claimants; // owners who may hold a claimable balance of busd
    bytes32[] internal pendingCommit;
    mapping(bytes32 c => OrderBook.PlaceParams) internal committedParams;
    mapping(bytes32 c => address) internal committer;
    mapping(bytes32 c => uint256) internal committedAt;
    mapping(bytes32 c => bytes32) internal saltOf;
    /// @dev Terms as placed (getOrder forgets a closed order).
    mapping(uint256 id => OrderBook.Order) internal placed;
    uint256 internal ownerNonce;

    uint256 public fills;
    uint256 public belowLimit;
    uint256 public unfair;
    uint256 public closedFilled;
    uint256 public groupFailures;
    uint256 public twapWrongCount;
    uint256 public icebergTwiceInBlock;
    uint256 public filledInRevealBlock;
    uint256 public sandwiches;

    constructor(
        OrderBook book_,
        PriceOracle oracle_,
        address admin_,
        address updater_,
        DevnetToken[3] memory tokens,
        BannableToken busd_,
        LiquidityPool[5] memory pools_
    ) {
        (book, oracle, admin, updater) = (book_, oracle_, admin_, updater_);
        (weth, usdc, dai, busd) = (tokens[0], tokens[1], tokens[2], busd_);
        for (uint256 i; i < 5; ++i) pools.push(pools_[i]);
        // pools: 0 weth/usdc, 1 weth/usdc (small), 2 weth/dai, 3 dai/usdc, 4 weth/busd
        markets.push(book.marketOf(address(weth), address(usdc)));
        markets.push(book.marketOf(address(usdc), address(weth)));
        markets.push(book.marketOf(address(weth), address(dai)));
        markets.push(book.marketOf(address(weth), address(busd)));
        _route(markets[0], _p(0), address(0));
        _route(markets[0], _p(1), address(0));
        _route(markets[0], _p(2), address(pools[3]));
        _route(markets[1], _p(0), address(0));
        _route(markets[1], _p(3), address(pools[2]));
        _route(markets[2], _p(2), address(0));
        _route(markets[2], _p(0), address(pools[3]));
        _route(markets[3], _p(4), address(0));
        _route(markets[0], _p(2), address(0)); // a wrong route: ends in DAI, not USDC
        sandwich = new SandwichKeeper();
    }

    function _p(uint256 i) private view returns (address) {
        return address(pools[i]);
    }

    function _route(uint16 market, address a, address b) private {
        Route storage r = routes.push();
        r.market = market;
        r.path.push(a);
        if (b != address(0)) r.path.push(b);
    }

    // ------------------------------------------------------------ placement

    function _tokenIn(uint16 market) private view returns (DevnetToken) {
        return DevnetToken(book.getMarket(market).tokenIn);
    }

    /// @dev Valid terms of a random kind, limits and triggers around the oracle.
    function _randomTerms(uint256 seed) private view returns (OrderBook.PlaceParams memory p) {
        uint256 mi = seed % markets.length;
        p.market = markets[mi];
        p.kind = OrderBook.OrderType((seed >> 8) % 5);
        bool usdcIn = mi == 1;
        uint256 wethAmount = bound(seed >> 16, 1e16, 20e18);
        p.amountIn = uint96(usdcIn ? wethAmount * 2000 / 1e12 : wethAmount);
        // Limit: 80% to 101% of the oracle value.
        uint256 limitBps = bound(seed >> 40, 8_000, 10_100);
        uint256 wethUsd = oracle.getPrice(address(weth)) / 1e18;
        uint256 fairOut = usdcIn ? uint256(p.amountIn) * 1e12 / wethUsd : mi == 2 ? wethAmount * wethUsd : wethAmount * wethUsd / 1e12;
        p.minAmountOut = uint96(fairOut * limitBps / BPS + 1);
        p.keeperFeeBps = uint8((seed >> 56) % 101);
        p.expiry = (seed >> 64) % 3 == 0 ? uint32(block.timestamp + bound(seed >> 72, 1, 3_000)) : 0;
        uint256 t = (seed >> 88) % 4;
        p.toleranceBps = t == 0 ? 0 : t == 1 ? uint16(bound(seed >> 96, 1, 2_000)) : t == 2 ? 10_000 : 0;
        if (p.kind == OrderBook.OrderType.StopLoss || p.kind == OrderBook.OrderType.TakeProfit) {
            uint256 rate = usdcIn ? 1e36 / (wethUsd * 1e18) : wethUsd * 1e18;
            p.triggerOrClip = uint128(rate * bound(seed >> 112, 9_500, 10_500) / BPS);
        } else if (p.kind == OrderBook.OrderType.Twap) {
            p.slices = uint16(bound(seed >> 112, 2, 12));
            p.interval = uint32(bound(seed >> 128, 1, 300));
            p.start = uint32(block.timestamp + bound(seed >> 144, 0, 60));
        } else if (p.kind == OrderBook.OrderType.Iceberg) {
            p.triggerOrClip = uint128(uint256(p.amountIn) / bound(seed >> 112, 2, 6) + 1);
        }
    }

    function _newOwner(uint16 market, uint256 seed) private returns (address owner) {
        owner = address(uint160(0x100000 + ++ownerNonce));
        // One in three owners of the busd market cannot receive busd.
        if (market == markets[3] && seed % 3 == 0) {
            busd.ban(owner);
            claimants.push(owner);
        }
    }

    function _fund(address owner, OrderBook.PlaceParams memory p) private {
        DevnetToken tokenIn = _tokenIn(p.market);
        tokenIn.mint(owner, p.amountIn);
        vm.prank(owner);
        tokenIn.approve(address(book), p.amountIn);
    }

    function _track(uint256 id, address owner, OrderBook.PlaceParams memory p, uint256 revealBlock) private {
        ids.push(id);
        info[id] = Info(owner, p.market, p.kind, p.slices, 0, 0, uint64(revealBlock), false);
        placed[id] = book.getOrder(id);
    }

    function place(uint256 seed) external {
        if (book.paused()) return;
        OrderBook.PlaceParams memory p = _randomTerms(seed);
        address owner = _newOwner(p.market, seed);
        _fund(owner, p);
        vm.prank(owner);
        _track(book.placeOrder(p), owner, p, 0);
    }

    function commit(uint256 seed) external {
        if (book.paused()) return;
        OrderBook.PlaceParams memory p = _randomTerms(seed);
        address owner = _newOwner(p.market, seed);
        bytes32 c = book.commitmentOf(owner, p, bytes32(seed));
        if (committer[c] != address(0)) return;
        _fund(owner, p);
        // Someone copies the commitment first: it must block nothing.
        vm.prank(address(0xc0b1e5));
        try book.commitOrder(c) {} catch {}
        vm.prank(owner);
        book.commitOrder(c);
        pendingCommit.push(c);
        committedParams[c] = p;
        committer[c] = owner;
        committedAt[c] = block.number;
        saltOf[c] = bytes32(seed);
    }

    function reveal(uint256 seed) external {
        if (pendingCommit.length == 0 || book.paused()) return;
        uint256 k = seed % pendingCommit.length;
        bytes32 c = pendingCommit[k];
        if (committedAt[c] >= block.number) return; // too early: the book refuses it
        OrderBook.PlaceParams memory p = committedParams[c];
        address owner = committer[c];
        pendingCommit[k] = pendingCommit[pendingCommit.length - 1];
        pendingCommit.pop();
        if (p.expiry != 0 && p.expiry <= block.timestamp) return; // lapsed while committed
        vm.prank(owner);
        _track(book.revealOrder(p, saltOf[c]), owner, p, block.number);
    }

    function cancel(uint256 seed) external {
        if (ids.length == 0) return;
        uint256 id = ids[seed % ids.length];
        Info storage o = info[id];
        if (o.closed) return;
        vm.prank(o.owner);
        book.cancelOrder(id);
        o.closed = true;
    }

    function refundExpired(uint256 a, uint256 b, uint256 c) external {
        if (ids.length == 0) return;
        uint256[] memory list = new uint256[](3);
        (list[0], list[1], list[2]) = (ids[a % ids.length], ids[b % ids.length], ids[c % ids.length]);
        book.refundExpired(list); // never reverts: closed and live ids are passed over
        for (uint256 i; i < 3; ++i) {
            if (book.getOrder(list[i]).owner == address(0)) info[list[i]].closed = true;
        }
    }

    function claim(uint256 seed) external {
        if (claimants.length == 0) return;
        address who = claimants[seed % claimants.length];
        if (book.claimable(who, address(busd)) == 0) return;
        vm.prank(who);
        book.claim(address(busd), address(uint160(uint256(keccak256(abi.encode(who))))));
    }

    // ---------------------------------------------------------------- fills

    function _groups(uint256 seed) private view returns (OrderBook.FillGroup[] memory groups) {
        uint256 n = bound(seed, 1, 3);
        groups = new OrderBook.FillGroup[](n);
        for (uint256 g; g < n; ++g) {
            seed = uint256(keccak256(abi.encode(seed, g)));
            Route storage r = routes[seed % routes.length];
            groups[g].market = r.market;
            groups[g].path = r.path;
            uint256 count = ids.length == 0 ? 0 : bound(seed >> 8, 1, 6);
            uint256[] memory chosen = new uint256[](count);
            uint256 start = ids.length == 0 ? 0 : (seed >> 16) % ids.length;
            // Mostly orders of the group's market (as keepers pick them), some of any market.
            bool anyMarket = (seed >> 40) % 8 == 0;
            uint256 found;
            for (uint256 k; k < ids.length && found < count; ++k) {
                uint256 id = ids[(start + k) % ids.length];
                if (anyMarket || info[id].market == r.market) chosen[found++] = id;
            }
            assembly ("memory-safe") {
                mstore(chosen, found)
            }
            count = found;
            // Mostly ascending (as keepers send them); sometimes not, or with a duplicate.
            if ((seed >> 24) % 4 != 0) _sort(chosen);
            groups[g].orderIds = chosen;
            if ((seed >> 32) % 3 == 0) {
                groups[g].amounts = new uint256[](count);
                for (uint256 i; i < count; ++i) {
                    groups[g].amounts[i] = bound(uint256(keccak256(abi.encode(seed, i))), 0, 5e18);
                }
            }
        }
    }

    function _sort(uint256[] memory a) private pure {
        for (uint256 i = 1; i < a.length; ++i) {
            uint256 v = a[i];
            uint256 j = i;
            while (j > 0 && a[j - 1] > v) {
                a[j] = a[j - 1];
                --j;
            }
            a[j] = v;
        }
    }

    function fill(uint256 seed, uint256 push) external {
        OrderBook.FillGroup[] memory groups = _groups(seed);
        if (book.paused()) {
            try book.executeBatch(groups, address(this)) {
                ++groupFailures; // a paused book must refuse fills
            } catch {}
            return;
        }
        vm.recordLogs();
        if (push % 4 == 0) {
            // The hostile keeper pushes the first group's first pool before its fill.
            LiquidityPool pool = LiquidityPool(groups[0].path[0]);
            address tokenIn = book.getMarket(groups[0].market).tokenIn;
            uint256 amount = bound(push, 0, tokenIn == address(usdc) ? 200_000e6 : 100e18);
            sandwich.run(book, groups, pool, tokenIn, amount);
            ++sandwiches;
        } else {
            book.executeBatch(groups, address(this));
        }
        _judge(vm.getRecordedLogs());
    }

    /// @dev Checks every fill of the batch against its order's limit, its tolerance of the
    /// oracle (which no call in the transaction moved), and the per-kind rules.
    function _judge(Vm.Log[] memory logs) private {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter != address(book)) continue;
            bytes32 topic = logs[i].topics[0];
            if (topic == GROUP_FAILED) {
                ++groupFailures;
            } else if (topic == FILLED) {
                _judgeFill(uint256(logs[i].topics[1]), logs[i].data);
            }
        }
    }

    function _judgeFill(uint256 id, bytes memory data) private {
        (uint256 amountIn, uint256 net, uint256 fee, uint256 remaining) = abi.decode(data, (uint256, uint256, uint256, uint256));
        Info storage o = info[id];
        ++fills;
        ++o.fills;
        if (o.closed) ++closedFilled;
        if (o.revealBlock == block.number) ++filledInRevealBlock;
        if (o.kind == OrderBook.OrderType.Iceberg && o.lastFillBlock == block.number) ++icebergTwiceInBlock;
        o.lastFillBlock = uint64(block.number);
        OrderBook.Order memory terms = placed[id];
        if (net * terms.amountIn < amountIn * terms.minAmountOut) ++belowLimit;
        OrderBook.Market memory m = book.getMarket(o.market);
        uint256 tol = terms.toleranceBps != 0 ? terms.toleranceBps : m.toleranceBps;
        if (tol < BPS) {
            (uint256 pIn, uint256 pOut,) = oracle.tryGetPrices(m.tokenIn, m.tokenOut);
            uint256 fair = amountIn * pIn * 10 ** m.decimalsOut / (pOut * 10 ** m.decimalsIn);
            // Pro-rata rounding: two units of slack.
            if ((net + fee + 2) * BPS < fair * (BPS - tol)) ++unfair;
        }
        if (remaining == 0) {
            o.closed = true;
            if (o.kind == OrderBook.OrderType.Twap && o.fills != o.slices) ++twapWrongCount;
        } else if (o.kind == OrderBook.OrderType.Twap && o.fills >= o.slices) {
            ++twapWrongCount;
        }
    }

    // ---------------------------------------------------------------- world

    function movePool(uint256 seed, bool up) external {
        LiquidityPool pool = pools[seed % pools.length];
        address t0 = pool.token0();
        address t1 = pool.token1();
        address tokenIn = up ? t0 : t1;
        (uint256 r0, uint256 r1,) = pool.getReserves();
        uint256 amount = bound(seed >> 8, 1, (up ? r0 : r1) / 8);
        (uint256 out,) = pool.getAmountOut(amount, tokenIn);
        if (out == 0) return;
        DevnetToken(tokenIn).mint(address(pool), amount);
        if (up) pool.swap(0, out, address(0xbeef), "");
        else pool.swap(out, 0, address(0xbeef), "");
    }

    function moveOracle(uint256 seed) external {
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + 1);
        uint256 current = oracle.getPrice(address(weth));
        // A walk kept between 500 and 8,000 USD: deep runs would otherwise drift to zero.
        uint256 p = bound(seed, _max(current * 85 / 100, 500e18), _max(_min(current * 115 / 100, 8_000e18), 500e18));
        vm.prank(updater);
        oracle.updatePrice(address(weth), p);
    }

    /// @dev Time passes, prices are refreshed, and arbitrageurs bring every pool back to the
    /// oracle (as the devnet's market does): without them pools wander off for good.
    function _max(uint256 a, uint256 b) private pure returns (uint256) {
        return a > b ? a : b;
    }

    function _min(uint256 a, uint256 b) private pure returns (uint256) {
        return a < b ? a : b;
    }

    function passTime(uint256 seed) external {
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + bound(seed, 1, 600));
        vm.startPrank(updater);
        (, uint256 p,) = oracle.latestRound(address(weth));
        oracle.updatePrice(address(weth), p);
        oracle.updatePrice(address(usdc), 1e18);
        oracle.updatePrice(address(dai), 1e18);
        oracle.updatePrice(address(busd), 1e18);
        vm.stopPrank();
        if (seed % 2 == 0) {
            for (uint256 i; i < pools.length; ++i) Arbitrage.align(pools[i], oracle);
        }
    }

    function pause(bool on) external {
        bool paused = book.paused();
        if (on == paused) return;
        vm.prank(admin);
        if (on) book.pause();
        else book.unpause();
    }

    // -------------------------------------------------------------- reading

    function idCount() external view returns (uint256) {
        return ids.length;
    }

    function claimantCount() external view returns (uint256) {
        return claimants.length;
    }

    function tokens() external view returns (DevnetToken, DevnetToken, DevnetToken) {
        return (weth, usdc, dai);
    }
}

contract OrderBookInvariantTest is Fixture {
    OrderBook internal book;
    BannableToken internal busd;
    BookHandler internal handler;

    function setUp() public override {
        super.setUp();
        busd = new BannableToken();
        vm.prank(admin);
        oracle.configureAsset(address(busd), 10, 500, 86_400);
        _setPrice(address(busd), 1e18);
        LiquidityPool wethBusd = _newPool(address(weth), 200e18, address(busd), 400_000e6);
        book = new OrderBook(admin, oracle);
        LiquidityPool[5] memory pools = [wethUsdc, wethUsdc2, wethDai, daiUsdc, wethBusd];
        vm.startPrank(admin);
        for (uint256 i; i < 5; ++i) book.setPool(address(pools[i]), true);
        vm.stopPrank();
        book.registerMarket(address(weth), address(usdc));
        book.registerMarket(address(usdc), address(weth));
        book.registerMarket(address(weth), address(dai));
        book.registerMarket(address(weth), address(busd));
        handler = new BookHandler(book, oracle, admin, updater, [weth, usdc, dai], busd, pools);
        targetContract(address(handler));
    }

    function _openRemaining(address token) internal view returns (uint256 sum) {
        uint256 n = handler.idCount();
        for (uint256 i; i < n; ++i) {
            OrderBook.Order memory o = book.getOrder(handler.ids(i));
            if (o.owner != address(0) && book.getMarket(o.market).tokenIn == token) sum += o.remaining;
        }
    }

    /// forge-config: default.invariant.depth = 256
    /// @notice No token is created or lost: the book holds exactly the unfilled escrow of each
    /// token plus what it holds for owners who could not receive their output.
    function invariant_escrowEqualsOpenRemainingPlusClaimable() public view {
        vm.assertEq(weth.balanceOf(address(book)), _openRemaining(address(weth)), "weth escrow");
        vm.assertEq(usdc.balanceOf(address(book)), _openRemaining(address(usdc)), "usdc escrow, no output left");
        vm.assertEq(dai.balanceOf(address(book)), 0, "no dai output left behind");
        uint256 owed;
        for (uint256 i; i < handler.claimantCount(); ++i) {
            owed += book.claimable(handler.claimants(i), address(busd));
        }
        vm.assertEq(busd.balanceOf(address(book)), owed, "busd held only for owners who could not receive it");
    }

    /// forge-config: default.invariant.depth = 256
    /// @notice Every fill meets its order's limit and its fairness tolerance of the oracle,
    /// whoever sends it (a keeper sandwiching its own fill included).
    function invariant_fillsMeetLimitAndTolerance() public view {
        vm.assertEq(handler.belowLimit(), 0, "fill below limit");
        vm.assertEq(handler.unfair(), 0, "fill beyond its tolerance below the oracle");
    }

    /// forge-config: default.invariant.depth = 256
    /// @notice No order, owner or token makes a batch or a group fail: no group is rolled back.
    function invariant_noGroupFails() public view {
        vm.assertEq(handler.groupFailures(), 0, "a group failed (or a paused book filled)");
    }

    /// forge-config: default.invariant.depth = 256
    /// @notice Closed orders never fill; a TWAP runs exactly its slices; an iceberg gives one
    /// clip a block; a revealed order fills from the next block.
    function invariant_perKindRules() public view {
        vm.assertEq(handler.closedFilled(), 0, "closed order filled");
        vm.assertEq(handler.twapWrongCount(), 0, "TWAP ran other than its slice count");
        vm.assertEq(handler.icebergTwiceInBlock(), 0, "two iceberg clips in one block");
        vm.assertEq(handler.filledInRevealBlock(), 0, "filled in its reveal block");
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {BookFixture} from "../utils/BookFixture.sol";
import {Test} from "../utils/Test.sol";
import {OrderBook} from "../../src/OrderBook.sol";
import {LiquidityPool} from "../../src/LiquidityPool.sol";
import {PriceOracle} from "../../src/PriceOracle.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";

/// @notice Drives the book with random placements, cancels, expiries, fills, price moves and
/// time. Every order has its own owner, so an owner's balance change is that order's fill.
contract BookHandler is Test {
    OrderBook internal book;
    LiquidityPool internal pool;
    PriceOracle internal oracle;
    DevnetToken internal weth;
    DevnetToken internal usdc;
    uint16 internal market;
    address internal updater;

    uint256[] public ids;
    mapping(uint256 id => address) public ownerOf;
    mapping(uint256 id => bool) public closed; // cancelled, refunded or fully filled
    uint256 public filledBelowLimit;
    uint256 public closedButFilled;
    uint256 public fills;

    constructor(
        OrderBook book_,
        LiquidityPool pool_,
        PriceOracle oracle_,
        DevnetToken weth_,
        DevnetToken usdc_,
        uint16 market_,
        address updater_
    ) {
        (book, pool, oracle, weth, usdc, market, updater) = (book_, pool_, oracle_, weth_, usdc_, market_, updater_);
    }

    function place(uint256 amountSeed, uint256 limitSeed, uint256 kindSeed, uint256 expirySeed) external {
        uint256 amountIn = bound(amountSeed, 1e15, 50e18);
        uint256 limitPrice = bound(limitSeed, 1_500, 2_300); // USDC per WETH
        OrderBook.PlaceParams memory p;
        p.market = market;
        p.kind = OrderBook.OrderType(kindSeed % 5);
        p.amountIn = uint96(amountIn);
        p.minAmountOut = uint96((amountIn * limitPrice) / 1e12);
        p.keeperFeeBps = uint8(kindSeed % 51);
        p.expiry = expirySeed % 3 == 0 ? uint32(block.timestamp + bound(expirySeed, 1, 3_000)) : 0;
        if (p.kind == OrderBook.OrderType.StopLoss || p.kind == OrderBook.OrderType.TakeProfit) {
            p.triggerOrClip = uint128(bound(limitSeed, 1_800, 2_200) * 1e18);
        } else if (p.kind == OrderBook.OrderType.Twap) {
            p.slices = uint16(bound(kindSeed, 2, 5));
            p.interval = 60;
            p.start = uint32(block.timestamp);
        } else if (p.kind == OrderBook.OrderType.Iceberg) {
            p.triggerOrClip = uint128(amountIn / 3 + 1);
        }
        address owner = address(uint160(0x100000 + ids.length));
        weth.mint(owner, amountIn);
        vm.startPrank(owner);
        weth.approve(address(book), amountIn);
        uint256 id = book.placeOrder(p);
        vm.stopPrank();
        ids.push(id);
        ownerOf[id] = owner;
    }

    function cancel(uint256 seed) external {
        if (ids.length == 0) return;
        uint256 id = ids[seed % ids.length];
        if (closed[id]) return;
        vm.prank(ownerOf[id]);
        book.cancelOrder(id);
        closed[id] = true;
    }

    function refundExpired(uint256 seed) external {
        if (ids.length == 0) return;
        uint256 id = ids[seed % ids.length];
        OrderBook.Order memory o = book.getOrder(id);
        if (o.owner == address(0) || block.timestamp <= o.expiry) return;
        uint256[] memory one = new uint256[](1);
        one[0] = id;
        book.refundExpired(one);
        closed[id] = true;
    }

    function fill(uint256 seed, uint256 count) external {
        uint256 n = ids.length;
        if (n == 0) return;
        count = bound(count, 1, 8);
        uint256 start = seed % n;
        uint256[] memory batch = new uint256[](count > n - start ? n - start : count);
        uint256[] memory before = new uint256[](batch.length);
        uint256[] memory remainingBefore = new uint256[](batch.length);
        OrderBook.Order[] memory snapshot = new OrderBook.Order[](batch.length);
        for (uint256 i; i < batch.length; ++i) {
            batch[i] = ids[start + i];
            snapshot[i] = book.getOrder(batch[i]);
            remainingBefore[i] = snapshot[i].remaining;
            before[i] = usdc.balanceOf(ownerOf[batch[i]]);
        }
        OrderBook.FillGroup[] memory g = new OrderBook.FillGroup[](1);
        g[0].market = market;
        g[0].path = new address[](1);
        g[0].path[0] = address(pool);
        g[0].orderIds = batch;
        book.executeBatch(g, address(this));
        for (uint256 i; i < batch.length; ++i) {
            uint256 id = batch[i];
            uint256 got = usdc.balanceOf(ownerOf[id]) - before[i];
            if (got == 0) continue;
            ++fills;
            if (closed[id]) ++closedButFilled;
            uint256 filledIn = remainingBefore[i] - book.getOrder(id).remaining;
            if (got * snapshot[i].amountIn < filledIn * snapshot[i].minAmountOut) ++filledBelowLimit;
            if (book.getOrder(id).owner == address(0)) closed[id] = true;
        }
    }

    function movePool(uint256 seed, bool up) external {
        uint256 amount = bound(seed, 1e16, 60e18);
        address tokenIn = up ? address(usdc) : address(weth);
        if (up) amount = amount * 2000 / 1e12;
        (uint256 out, address tokenOut) = pool.getAmountOut(amount, tokenIn);
        if (out == 0) return;
        DevnetToken(tokenIn).mint(address(pool), amount);
        if (tokenOut < tokenIn) pool.swap(out, 0, address(0xbeef), "");
        else pool.swap(0, out, address(0xbeef), "");
    }

    function moveOracle(uint256 seed) external {
        uint256 p = bound(seed, 1_700, 2_300) * 1e18;
        uint256 current = oracle.getPrice(address(weth));
        uint256 maxStep = current / 6;
        if (p > current + maxStep) p = current + maxStep;
        if (p + maxStep < current) p = current - maxStep;
        vm.prank(updater);
        oracle.updatePrice(address(weth), p);
    }

    function warp(uint256 seed) external {
        vm.warp(block.timestamp + bound(seed, 1, 600));
        // Keep oracle prices fresh so stops stay fillable.
        vm.startPrank(updater);
        (, uint256 price,) = oracle.latestRound(address(weth));
        oracle.updatePrice(address(weth), price);
        oracle.updatePrice(address(usdc), 1e18);
        vm.stopPrank();
    }

    function idCount() external view returns (uint256) {
        return ids.length;
    }
}

contract OrderBookInvariantTest is BookFixture {
    BookHandler internal handler;

    function setUp() public override {
        super.setUp();
        handler = new BookHandler(book, wethUsdc, oracle, weth, usdc, sellWeth, updater);
        vm.prank(admin);
        oracle.setUpdater(address(handler), true);
        targetContract(address(handler));
    }

    /// @notice No token is created or lost: the book holds exactly the unfilled escrow.
    function invariant_escrowEqualsOpenRemaining() public view {
        uint256 sum;
        uint256 n = handler.idCount();
        for (uint256 i; i < n; ++i) {
            sum += book.getOrder(handler.ids(i)).remaining;
        }
        vm.assertEq(weth.balanceOf(address(book)), sum, "weth escrow == open remaining");
        vm.assertEq(usdc.balanceOf(address(book)), 0, "no output left behind");
    }

    /// @notice No order is ever filled below its limit.
    function invariant_noFillBelowLimit() public view {
        vm.assertEq(handler.filledBelowLimit(), 0, "fill below limit");
    }

    /// @notice No cancelled, refunded or completed order is ever filled again.
    function invariant_noFillOfClosedOrder() public view {
        vm.assertEq(handler.closedButFilled(), 0, "closed order filled");
    }
}

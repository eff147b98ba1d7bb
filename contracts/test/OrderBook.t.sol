// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {BookFixture, FeeOnTransferToken} from "./utils/BookFixture.sol";
import {OrderBook} from "../src/OrderBook.sol";
import {PoolWhitelist} from "../src/PoolWhitelist.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {LiquidityPool} from "../src/LiquidityPool.sol";
import {DevnetToken} from "../src/devnet/DevnetToken.sol";

contract OrderBookPlacementTest is BookFixture {
    function test_registerMarket_isIdempotent() public {
        uint16 again = book.registerMarket(address(weth), address(usdc));
        vm.assertEq(again, sellWeth, "same id for the same direction");
        OrderBook.Market memory m = book.getMarket(buyWeth);
        vm.assertEq(m.tokenIn, address(usdc), "tokenIn");
        vm.assertEq(m.tokenOut, address(weth), "tokenOut");
    }

    function test_registerMarket_rejectsSameToken() public {
        vm.expectRevert(OrderBook.InvalidMarket.selector);
        book.registerMarket(address(weth), address(weth));
    }

    function test_place_escrowsAndStores() public {
        uint256 before = weth.balanceOf(alice);
        uint256 id = _limit(alice, 2e18, 3_900e6);
        vm.assertEq(weth.balanceOf(alice), before - 2e18, "escrowed from trader");
        vm.assertEq(weth.balanceOf(address(book)), 2e18, "held by book");
        OrderBook.Order memory o = book.getOrder(id);
        vm.assertEq(o.owner, alice, "owner");
        vm.assertEq(o.remaining, 2e18, "remaining");
        vm.assertEq(o.minAmountOut, 3_900e6, "limit");
        vm.assertEq(o.expiry, type(uint32).max, "good till cancelled");
    }

    function test_place_rejectsBadInput() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        vm.startPrank(alice);

        p.market = 99;
        vm.expectRevert(abi.encodeWithSelector(OrderBook.UnknownMarket.selector, uint16(99)));
        book.placeOrder(p);
        p.market = sellWeth;

        p.amountIn = 0;
        vm.expectRevert(OrderBook.ZeroAmount.selector);
        book.placeOrder(p);
        p.amountIn = 1e18;

        p.minAmountOut = 0;
        vm.expectRevert(OrderBook.ZeroMinAmountOut.selector);
        book.placeOrder(p);
        p.minAmountOut = 1;

        p.keeperFeeBps = 101;
        vm.expectRevert(abi.encodeWithSelector(OrderBook.KeeperFeeTooHigh.selector, 101, 100));
        book.placeOrder(p);
        p.keeperFeeBps = 10;

        p.expiry = uint32(block.timestamp);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.ExpiryInPast.selector, block.timestamp));
        book.placeOrder(p);
        p.expiry = 0;

        p.kind = OrderBook.OrderType.StopLoss;
        vm.expectRevert(OrderBook.InvalidTrigger.selector);
        book.placeOrder(p);

        p.kind = OrderBook.OrderType.Twap;
        p.slices = 1;
        p.interval = 60;
        vm.expectRevert(OrderBook.InvalidTwap.selector);
        book.placeOrder(p);

        p.kind = OrderBook.OrderType.Iceberg;
        p.triggerOrClip = 1e18;
        vm.expectRevert(OrderBook.InvalidClip.selector);
        book.placeOrder(p);
        vm.stopPrank();
    }

    function test_place_rejectsFeeOnTransferToken() public {
        FeeOnTransferToken tax = new FeeOnTransferToken();
        vm.prank(admin); // the oracle does not price it: only the owner may list it
        uint16 m = book.registerMarket(address(tax), address(usdc));
        tax.mint(alice, 10e18);
        vm.startPrank(alice);
        tax.approve(address(book), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.UnsupportedToken.selector, address(tax)));
        book.placeOrder(_params(m, OrderBook.OrderType.Limit, 1e18, 1));
        vm.stopPrank();
    }

    function test_cancel_refundsAndCloses() public {
        uint256 id = _limit(alice, 2e18, 3_900e6);
        uint256 before = weth.balanceOf(alice);
        vm.expectEmit();
        emit OrderBook.OrderCancelled(id, 2e18);
        vm.prank(alice);
        book.cancelOrder(id);
        vm.assertEq(weth.balanceOf(alice), before + 2e18, "full refund");
        vm.assertEq(book.getOrder(id).owner, address(0), "closed");
    }

    function test_cancel_onlyOwner() public {
        uint256 id = _limit(alice, 1e18, 1);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.NotOrderOwner.selector, id, bob));
        vm.prank(bob);
        book.cancelOrder(id);
    }

    function test_cancel_worksWhilePaused() public {
        uint256 id = _limit(alice, 1e18, 1);
        vm.prank(admin);
        book.pause();
        vm.prank(alice);
        book.cancelOrder(id);
        vm.assertEq(weth.balanceOf(address(book)), 0, "refunded while paused");
    }

    function test_refundExpired() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        p.expiry = uint32(block.timestamp + 100);
        vm.prank(alice);
        uint256 id = book.placeOrder(p);

        vm.assertEq(book.refundExpired(_ids(id)), 0, "not expired: passed over");
        vm.assertEq(book.getOrder(id).remaining, 1e18, "still open");

        vm.warp(block.timestamp + 101);
        uint256 before = weth.balanceOf(alice);
        vm.assertEq(book.refundExpired(_ids(id)), 1, "refunded");
        vm.assertEq(weth.balanceOf(alice), before + 1e18, "refunded to owner");

        vm.assertEq(book.refundExpired(_ids(id)), 0, "closed: passed over");
    }

    function test_commitReveal() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 5e18, 9_000e6);
        bytes32 salt = keccak256("salt");
        bytes32 c = book.commitmentOf(alice, p, salt);

        vm.expectRevert(abi.encodeWithSelector(OrderBook.CommitmentNotFound.selector, c));
        vm.prank(alice);
        book.revealOrder(p, salt);

        vm.prank(alice);
        book.commitOrder(c);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.CommitmentExists.selector, c));
        vm.prank(alice);
        book.commitOrder(c);
        vm.assertEq(weth.balanceOf(address(book)), 0, "nothing escrowed or revealed at commit");

        vm.expectRevert(abi.encodeWithSelector(OrderBook.RevealTooEarly.selector, c));
        vm.prank(alice);
        book.revealOrder(p, salt);

        vm.roll(block.number + 1);
        // Someone else cannot reveal alice's commitment: the hash binds the owner.
        bytes32 asBob = book.commitmentOf(bob, p, salt);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.CommitmentNotFound.selector, asBob));
        vm.prank(bob);
        book.revealOrder(p, salt);

        vm.prank(alice);
        uint256 id = book.revealOrder(p, salt);
        vm.assertEq(book.getOrder(id).owner, alice, "placed on reveal");
        vm.assertEq(book.commitments(alice, c), 0, "commitment consumed");
    }

    function test_pause_guardianAndOwner() public {
        vm.expectRevert(abi.encodeWithSelector(OrderBook.NotGuardian.selector, bob));
        vm.prank(bob);
        book.pause();

        vm.prank(admin);
        book.setGuardian(bob);
        vm.prank(bob);
        book.pause();

        vm.expectRevert(Pausable.EnforcedPause.selector);
        _limit(alice, 1e18, 1);

        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob));
        vm.prank(bob);
        book.unpause();

        vm.prank(admin);
        book.unpause();
        _limit(alice, 1e18, 1);
    }

    function test_ownership_isTwoStep() public {
        vm.prank(admin);
        book.transferOwnership(bob);
        vm.assertEq(book.owner(), admin, "unchanged until accepted");
        vm.prank(bob);
        book.acceptOwnership();
        vm.assertEq(book.owner(), bob, "accepted");
    }

    function test_setPool_onlyOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob));
        vm.prank(bob);
        book.setPool(address(1), true);
    }
}

contract OrderBookExecutionTest is BookFixture {
    function test_limit_fillsAtOrAboveLimitAndPaysKeeper() public {
        (uint256 quote,) = wethUsdc.getAmountOut(1e18, address(weth));
        uint256 id = _limit(alice, 1e18, 1_900e6);
        uint256 before = usdc.balanceOf(alice);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 1, "one fill");
        uint256 fee = (quote * 10) / 10_000;
        vm.assertEq(usdc.balanceOf(alice) - before, quote - fee, "trader gets quote less fee");
        vm.assertEq(usdc.balanceOf(keeper), fee, "keeper fee");
        vm.assertEq(book.getOrder(id).owner, address(0), "closed after full fill");
    }

    function test_limit_notMetIsSkipped() public {
        uint256 id = _limit(alice, 1e18, 2_100e6);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.LimitNotMet);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "no fill");
        vm.assertEq(book.getOrder(id).remaining, 1e18, "still open");
    }

    function test_batch_badOrderDoesNotStopOthers() public {
        uint256 good1 = _limit(alice, 1e18, 1_900e6);
        uint256 tooGreedy = _limit(bob, 1e18, 2_500e6);
        uint256 cancelled = _limit(bob, 1e18, 1);
        uint256 good2 = _limit(alice, 2e18, 3_800e6);
        vm.prank(bob);
        book.cancelOrder(cancelled);

        uint256[] memory ids = new uint256[](4);
        (ids[0], ids[1], ids[2], ids[3]) = (good1, tooGreedy, cancelled, good2);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(cancelled, OrderBook.SkipReason.NotOpen);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(tooGreedy, OrderBook.SkipReason.LimitNotMet);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), ids), 2, "two good orders filled");
        vm.assertEq(book.getOrder(tooGreedy).remaining, 1e18, "greedy order untouched");
    }

    function test_batchAtLeast_revertsInsteadOfLandingANoOp() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        _fill(sellWeth, address(wethUsdc), _ids(id)); // another keeper got there first
        OrderBook.FillGroup[] memory g = _group(sellWeth, address(wethUsdc), _ids(id));
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.TooFewFilled.selector, 0, 1));
        book.executeBatchAtLeast(g, keeper, 1);
    }

    function test_batchAtLeast_fillsWhenEnoughAreLeft() public {
        uint256[] memory ids = new uint256[](2);
        ids[0] = _limit(alice, 1e18, 1_900e6);
        ids[1] = _limit(bob, 1e18, 1_900e6);
        _fill(sellWeth, address(wethUsdc), _ids(ids[0])); // one of two taken by a rival
        OrderBook.FillGroup[] memory g = _group(sellWeth, address(wethUsdc), ids);
        vm.prank(keeper);
        vm.assertEq(book.executeBatchAtLeast(g, keeper, 1), 1, "the other one is still worth it");
        vm.assertEq(book.getOrder(ids[1]).remaining, 0, "filled");
    }

    function test_batch_sharesOneSwapProRata() public {
        uint256[] memory ids = new uint256[](3);
        ids[0] = _limit(alice, 1e18, 1_800e6);
        ids[1] = _limit(bob, 2e18, 3_600e6);
        ids[2] = _limit(alice, 3e18, 5_400e6);
        (uint256 quote,) = wethUsdc.getAmountOut(6e18, address(weth));
        uint256 aliceBefore = usdc.balanceOf(alice);
        uint256 bobBefore = usdc.balanceOf(bob);
        _fill(sellWeth, address(wethUsdc), ids);
        uint256 bobNet = usdc.balanceOf(bob) - bobBefore;
        uint256 aliceNet = usdc.balanceOf(alice) - aliceBefore;
        vm.assertEq(bobNet + aliceNet + usdc.balanceOf(keeper), quote, "all output distributed");
        vm.assertApproxEqRel(bobNet * 2, aliceNet, 1e12, "pro rata (2 of 6 vs 4 of 6)");
        vm.assertEq(usdc.balanceOf(address(book)), 0, "no dust stranded");
    }

    function test_batch_rejectsDuplicatesAndWrongMarket() public {
        uint256 id = _limit(alice, 1e18, 1);
        vm.prank(bob);
        uint256 other = book.placeOrder(_params(buyWeth, OrderBook.OrderType.Limit, 2_000e6, 1));
        uint256[] memory ids = new uint256[](3);
        (ids[0], ids[1], ids[2]) = (id, id, other);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.NotAscending);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(other, OrderBook.SkipReason.WrongMarket);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), ids), 1, "filled once");
    }

    function test_batch_unlistedPoolIsBadRoute() public {
        uint256 id = _limit(alice, 1e18, 1);
        vm.prank(admin);
        book.setPool(address(wethUsdc), false);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.BadRoute);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "no fill through an unlisted pool");
    }

    function test_batch_routeMustEndInTokenOut() public {
        uint256 id = _limit(alice, 1e18, 1);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.BadRoute);
        _fill(sellWeth, address(wethDai), _ids(id));
    }

    function test_twoHopRoute() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        OrderBook.FillGroup[] memory g = _group(sellWeth, address(wethDai), _ids(id));
        g[0].path = new address[](2);
        (g[0].path[0], g[0].path[1]) = (address(wethDai), address(daiUsdc));
        vm.prank(keeper);
        vm.assertEq(book.executeBatch(g, keeper), 1, "filled through WETH->DAI->USDC");
        vm.assertGe(usdc.balanceOf(alice), 1_000_000_000e6 + 1_900e6, "limit held over two hops");
    }

    function test_partialFillOfLimit() public {
        uint256 id = _limit(alice, 4e18, 7_600e6);
        OrderBook.FillGroup[] memory g = _group(sellWeth, address(wethUsdc), _ids(id));
        g[0].amounts = new uint256[](1);
        g[0].amounts[0] = 1e18;
        vm.prank(keeper);
        book.executeBatch(g, keeper);
        vm.assertEq(book.getOrder(id).remaining, 3e18, "three quarters left");
    }

    function test_expiredIsSkipped() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        p.expiry = uint32(block.timestamp + 10);
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        vm.warp(block.timestamp + 11);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.Expired);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "expired order not filled");
    }

    function test_stopLoss_armsOnOracleNotOnPool() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.StopLoss, 1e18, 1_500e6);
        p.triggerOrClip = 1_800e18; // sell if WETH <= 1800 USDC
        vm.prank(alice);
        uint256 id = book.placeOrder(p);

        // A pool-only dump does not trigger it.
        _swap(wethUsdc, bob, address(weth), 100e18);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.NotTriggered);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "pool spike ignored");

        // The oracle crossing does (filled through the pool that is near the oracle: the
        // dumped one pays far below it, and the market's tolerance refuses that).
        _setPrice(address(weth), 1_790e18);
        vm.expectEmit();
        emit OrderBook.OrderArmed(id, 1_790e18);
        vm.assertEq(_fill(sellWeth, address(wethUsdc2), _ids(id)), 1, "stop filled");
        vm.assertGe(usdc.balanceOf(alice), 1_000_000_000e6 + 1_500e6, "slippage bound held");
    }

    function test_stopLoss_staysArmedWhenFillFails() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.StopLoss, 1e18, 1_700e6);
        p.triggerOrClip = 1_800e18;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        _swap(wethUsdc, bob, address(weth), 200e18); // pool far below the slippage bound
        _setPrice(address(weth), 1_790e18);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertTrue(book.getOrder(id).armed, "armed although the fill missed its bound");
        _setPrice(address(weth), 1_900e18); // oracle recovers: still armed, fills via the other pool
        vm.assertEq(_fill(sellWeth, address(wethUsdc2), _ids(id)), 1, "armed stop filled later");
    }

    function test_takeProfit_triggersAbove() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.TakeProfit, 1e18, 1_900e6);
        p.triggerOrClip = 2_020e18;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "not yet");
        _setPrice(address(weth), 2_030e18);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 1, "take profit filled");
    }

    function test_stop_staleOracleIsSkipped() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.StopLoss, 1e18, 1);
        p.triggerOrClip = 1_800e18;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        vm.warp(block.timestamp + 3600 + 601);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.OracleUnavailable);
        _fill(sellWeth, address(wethUsdc), _ids(id));
    }

    function test_twap_slicesRespectInterval() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Twap, 10e18 + 1, 18_000e6);
        p.slices = 3;
        p.interval = 300;
        p.start = uint32(block.timestamp);
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        uint256 first = uint256(10e18 + 1) / 3;
        uint256 second = (10e18 + 1 - first) / 2;

        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertEq(book.getOrder(id).remaining, 10e18 + 1 - first, "first slice");
        vm.assertEq(book.getOrder(id).slices, 2, "two slices left");

        vm.warp(block.timestamp + 299);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.NotDue);
        _fill(sellWeth, address(wethUsdc), _ids(id));

        vm.warp(block.timestamp + 1);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertEq(book.getOrder(id).remaining, 10e18 + 1 - first - second, "second slice");

        vm.warp(block.timestamp + 300);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertEq(book.getOrder(id).owner, address(0), "last slice takes the remainder and closes");
    }

    function test_iceberg_fillsInClips() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Iceberg, 5e18, 9_000e6);
        p.triggerOrClip = 2e18;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertEq(book.getOrder(id).remaining, 3e18, "one clip");
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.NotDue);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "one clip per block");
        vm.warp(block.timestamp + 1);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertEq(book.getOrder(id).remaining, 1e18, "second clip");
        vm.warp(block.timestamp + 1);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        vm.assertEq(book.getOrder(id).owner, address(0), "last partial clip closes it");
    }

    function test_execute_errors() public {
        // A group that fails as a whole is rolled back and named; the batch goes on.
        OrderBook.FillGroup[] memory g = _group(77, address(wethUsdc), _ids(1));
        vm.expectEmit();
        emit OrderBook.GroupFailed(0, OrderBook.UnknownMarket.selector);
        vm.assertEq(book.executeBatch(g, keeper), 0, "unknown market");

        g[0].market = sellWeth;
        g[0].amounts = new uint256[](2);
        vm.expectEmit();
        emit OrderBook.GroupFailed(0, OrderBook.LengthMismatch.selector);
        book.executeBatch(g, keeper);

        vm.expectRevert(OrderBook.OnlySelf.selector);
        book.fillGroup(g[0], keeper, keeper);

        vm.prank(admin);
        book.pause();
        g[0].amounts = new uint256[](0);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        book.executeBatch(g, keeper);
    }

    /// @notice Fuzz: whatever the size, limit and pool state, a fill never pays below the limit.
    function testFuzz_fillNeverBelowLimit(uint256 amountIn, uint256 limitBps, uint256 dump) public {
        amountIn = bound(amountIn, 1e12, 200e18);
        limitBps = bound(limitBps, 5_000, 10_500);
        dump = bound(dump, 0, 300e18);
        if (dump >= 1e12) _swap(wethUsdc, bob, address(weth), dump);
        uint256 minOut = (amountIn * 2000 * limitBps) / 10_000 / 1e12;
        vm.assume(minOut > 0);
        uint256 id = _limit(alice, amountIn, minOut);
        uint256 before = usdc.balanceOf(alice);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        uint256 got = usdc.balanceOf(alice) - before;
        if (got != 0) vm.assertGe(got * amountIn, amountIn * minOut, "at or above the limit");
        else vm.assertEq(book.getOrder(id).remaining, amountIn, "untouched when not fillable");
    }
}

contract OrderBookFairnessTest is BookFixture {
    function test_unfairRouteIsSkipped() public {
        uint256 id = _limit(alice, 1e18, 1_500e6); // a loose limit: only the tolerance protects it
        _swap(wethUsdc, bob, address(weth), 40e18); // the pool ~8% below the oracle's 2,000
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.UnfairPrice);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "not filled far below fair value");
        // The other pool is at the oracle: it fills there.
        vm.assertEq(_fill(sellWeth, address(wethUsdc2), _ids(id)), 1, "filled at a fair rate");
    }

    function test_orderOverridesTheMarketTolerance() public {
        _swap(wethUsdc, bob, address(weth), 40e18);
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1_500e6);
        p.toleranceBps = 1_000; // this trader accepts 10% below the oracle
        vm.prank(alice);
        uint256 loose = book.placeOrder(p);
        p.toleranceBps = 10_000; // and this one relies on the limit alone
        vm.prank(bob);
        uint256 limitOnly = book.placeOrder(p);
        uint256 strict = _limit(alice, 1e18, 1_500e6);
        vm.assertEq(book.getOrder(loose).toleranceBps, 1_000, "override stored");
        uint256[] memory ids = new uint256[](3);
        (ids[0], ids[1], ids[2]) = (loose, limitOnly, strict);
        vm.expectEmit();
        emit OrderBook.OrderSkipped(strict, OrderBook.SkipReason.UnfairPrice);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), ids), 2, "the two looser orders fill");
    }

    function test_staleOracleHoldsFillsUnlessLimitOnly() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        vm.warp(block.timestamp + 86_400 + 601); // every price stale
        vm.expectEmit();
        emit OrderBook.OrderSkipped(id, OrderBook.SkipReason.OracleUnavailable);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "no fair value to check against");
        vm.prank(admin);
        book.setMarketTolerance(sellWeth, 10_000);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 1, "a limit-only market fills on the limit");
    }

    function test_marketTolerance_onlyOwnerAndBounded() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob));
        vm.prank(bob);
        book.setMarketTolerance(sellWeth, 100);
        vm.startPrank(admin);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.InvalidTolerance.selector, 0));
        book.setMarketTolerance(sellWeth, 0);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.InvalidTolerance.selector, 10_001));
        book.setMarketTolerance(sellWeth, 10_001);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.UnknownMarket.selector, 99));
        book.setMarketTolerance(99, 100);
        vm.expectEmit();
        emit OrderBook.MarketToleranceSet(sellWeth, 100);
        book.setMarketTolerance(sellWeth, 100);
        vm.stopPrank();
        vm.assertEq(book.getMarket(sellWeth).toleranceBps, 100, "stored");
        vm.assertEq(book.getMarket(buyWeth).toleranceBps, book.DEFAULT_TOLERANCE_BPS(), "others keep the default");
        vm.assertEq(book.getMarket(sellWeth).decimalsIn, 18, "decimals in");
        vm.assertEq(book.getMarket(sellWeth).decimalsOut, 6, "decimals out");
    }

    /// @notice Fuzz: whatever the pool and oracle do, a fill's rate is within its tolerance of
    /// the oracle's (before the keeper fee) and never below the limit.
    function testFuzz_fillWithinToleranceOfOracle(uint256 dump, bool down, uint256 oracleBps, uint256 tol) public {
        dump = bound(dump, 0, 150e18);
        oracleBps = bound(oracleBps, 8_500, 11_500);
        tol = bound(tol, 1, 2_000);
        if (dump > 1e15) {
            if (down) _swap(wethUsdc, bob, address(weth), dump);
            else _swap(wethUsdc, bob, address(usdc), dump * 2000 / 1e12);
        }
        uint256 price = 2000e18 * oracleBps / 10_000;
        _setPrice(address(weth), price);
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 5e18, 1);
        p.toleranceBps = uint16(tol);
        p.keeperFeeBps = 0;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        uint256 before = usdc.balanceOf(alice);
        _fill(sellWeth, address(wethUsdc), _ids(id));
        uint256 got = usdc.balanceOf(alice) - before;
        if (got == 0) return;
        uint256 fair = 5e18 * price / 1e18 / 1e12; // USDC units
        vm.assertGe(got * 10_000, fair * (10_000 - tol), "filled beyond its tolerance below the oracle");
    }
}

/// @dev Reverts every transfer while paused (a USDC-style pause).
contract PausableToken is DevnetToken {
    bool public paused;

    constructor() DevnetToken("Pausable USD", "PUSD", 6) {}

    function setPaused(bool p) external {
        paused = p;
    }

    function _update(address from, address to, uint256 value) internal override {
        require(!paused, "paused");
        super._update(from, to, value);
    }
}

/// @dev An owner that refuses to hold the token (a blacklisted address, seen from the book).
contract RefusingToken is DevnetToken {
    mapping(address who => bool) public refused;

    constructor() DevnetToken("Refusing USD", "RUSD", 6) {}

    function refuse(address who) external {
        refused[who] = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        require(!refused[to], "refused");
        super._update(from, to, value);
    }
}

contract OrderBookIsolationTest is BookFixture {
    function _pricedPoolWith(DevnetToken t) internal returns (LiquidityPool pool, uint16 m) {
        vm.prank(admin);
        oracle.configureAsset(address(t), 10, 500, 86_400);
        _setPrice(address(t), 1e18);
        pool = _newPool(address(weth), 100e18, address(t), 200_000e6);
        vm.prank(admin);
        book.setPool(address(pool), true);
        m = book.registerMarket(address(weth), address(t));
    }

    function test_failingGroupIsRolledBackAndOthersFill() public {
        PausableToken pusd = new PausableToken();
        (LiquidityPool pool, uint16 m) = _pricedPoolWith(pusd);
        vm.prank(bob);
        uint256 stuck = book.placeOrder(_params(m, OrderBook.OrderType.Limit, 1e18, 1));
        uint256 honest = _limit(alice, 1e18, 1_900e6);
        pusd.setPaused(true);
        OrderBook.FillGroup[] memory g = new OrderBook.FillGroup[](2);
        (g[0].market, g[0].path, g[0].orderIds) = (m, _path(address(pool)), _ids(stuck));
        (g[1].market, g[1].path, g[1].orderIds) = (sellWeth, _path(address(wethUsdc)), _ids(honest));
        vm.expectEmit(true, true, true, false);
        emit OrderBook.GroupFailed(0, bytes4(0));
        vm.expectEmit(true, true, true, false);
        emit OrderBook.OrderFilled(honest, keeper, 0, 0, 0, 0);
        vm.prank(keeper);
        vm.assertEq(book.executeBatch(g, keeper), 1, "the honest group filled");
        vm.assertEq(book.getOrder(stuck).remaining, 1e18, "the failed group's order is untouched");
        vm.assertEq(weth.balanceOf(address(book)), 1e18, "its escrow too");
    }

    function test_ownerWhoCannotReceiveIsCreditedAndClaims() public {
        RefusingToken rusd = new RefusingToken();
        (LiquidityPool pool, uint16 m) = _pricedPoolWith(rusd);
        vm.prank(bob);
        uint256 refused = book.placeOrder(_params(m, OrderBook.OrderType.Limit, 1e18, 1_900e6));
        vm.prank(alice);
        uint256 other = book.placeOrder(_params(m, OrderBook.OrderType.Limit, 1e18, 1_900e6));
        rusd.refuse(bob);
        uint256[] memory ids = new uint256[](2);
        (ids[0], ids[1]) = (refused, other);
        vm.assertEq(_fill(m, address(pool), ids), 2, "both filled");
        uint256 owed = book.claimable(bob, address(rusd));
        vm.assertGt(owed, 1_900e6, "bob's output is held for him");
        vm.assertGt(rusd.balanceOf(alice), 1_900e6, "alice paid as usual");

        vm.expectRevert(abi.encodeWithSelector(OrderBook.NothingToClaim.selector, address(rusd)));
        vm.prank(alice);
        book.claim(address(rusd), alice);
        address elsewhere = makeAddr("bob's other wallet");
        vm.expectEmit();
        emit OrderBook.Claimed(bob, address(rusd), elsewhere, owed);
        vm.prank(bob);
        book.claim(address(rusd), elsewhere);
        vm.assertEq(rusd.balanceOf(elsewhere), owed, "claimed to another address");
        vm.assertEq(book.claimable(bob, address(rusd)), 0, "once");
    }

    function test_filledEventNamesTheKeeper() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        vm.expectEmit(true, true, false, false);
        emit OrderBook.OrderFilled(id, keeper, 0, 0, 0, 0);
        _fill(sellWeth, address(wethUsdc), _ids(id));
    }

    function test_placementIsBounded() public {
        vm.startPrank(alice);
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        p.interval = 60;
        vm.expectRevert(OrderBook.UnusedParam.selector);
        book.placeOrder(p);
        p.interval = 0;
        p.triggerOrClip = 5;
        vm.expectRevert(OrderBook.UnusedParam.selector);
        book.placeOrder(p);
        p.triggerOrClip = 0;
        p.toleranceBps = 10_001;
        vm.expectRevert(abi.encodeWithSelector(OrderBook.InvalidTolerance.selector, 10_001));
        book.placeOrder(p);

        p = _params(sellWeth, OrderBook.OrderType.Twap, 1e18, 1);
        (p.slices, p.interval, p.start) = (4, book.MAX_TWAP_INTERVAL() + 1, uint32(block.timestamp));
        vm.expectRevert(OrderBook.InvalidTwap.selector);
        book.placeOrder(p);
        (p.slices, p.interval) = (book.MAX_TWAP_SLICES() + 1, 60);
        vm.expectRevert(OrderBook.InvalidTwap.selector);
        book.placeOrder(p);
        (p.slices, p.start) = (4, uint32(block.timestamp + book.MAX_TWAP_START_DELAY() + 1));
        vm.expectRevert(OrderBook.InvalidTwap.selector);
        book.placeOrder(p);
        vm.stopPrank();
    }

    function test_registerMarket_gatedToPricedTokens() public {
        DevnetToken junk = new DevnetToken("Junk", "J", 18);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.MarketNotPriced.selector, address(junk)));
        vm.prank(bob);
        book.registerMarket(address(junk), address(usdc));
        vm.prank(admin);
        uint16 m = book.registerMarket(address(junk), address(usdc));
        vm.assertEq(book.getMarket(m).tokenIn, address(junk), "the owner lists what it vouches for");
        vm.expectRevert(OrderBook.InvalidMarket.selector);
        vm.prank(admin);
        book.registerMarket(address(book), address(usdc)); // no decimals()
    }

    function test_renounceOwnership_disabled() public {
        vm.expectRevert(PoolWhitelist.RenounceDisabled.selector);
        vm.prank(admin);
        book.renounceOwnership();
    }
}

contract OrderBookGasLimitTest is BookFixture {
    /// @notice A batch given too little gas reverts as a whole instead of rolling a group back
    /// quietly: gas estimation must find what the batch needs.
    function test_starvedBatchRevertsInsteadOfFailingAGroup() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        OrderBook.FillGroup[] memory g = _group(sellWeth, address(wethUsdc), _ids(id));
        bytes memory call_ = abi.encodeCall(book.executeBatch, (g, keeper));
        bool namedSeen;
        // At every gas limit the batch either fills or reverts whole: never lands with its
        // group quietly rolled back.
        for (uint256 gas_ = 60_000; gas_ < 300_000; gas_ += 4_000) {
            vm.prank(keeper);
            (bool ok, bytes memory ret) = address(book).call{gas: gas_}(call_);
            if (!ok) {
                vm.assertEq(book.getOrder(id).remaining, 1e18, "untouched by a reverted batch");
                if (ret.length >= 4 && bytes4(ret) == OrderBook.OutOfGas.selector) namedSeen = true;
                continue;
            }
            vm.assertEq(book.getOrder(id).owner, address(0), "a batch that lands has filled its group");
            vm.assertTrue(namedSeen, "the OutOfGas revert was seen below the working gas");
            return;
        }
        vm.assertTrue(false, "never filled");
    }
}

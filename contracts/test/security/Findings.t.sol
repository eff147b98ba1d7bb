// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {BookFixture} from "../utils/BookFixture.sol";
import {Fixture} from "../utils/Fixture.sol";
import {MarketFixture} from "../LendingMarket.t.sol";
import {OrderBook} from "../../src/OrderBook.sol";
import {LiquidityPool} from "../../src/LiquidityPool.sol";
import {RebalancingVault} from "../../src/RebalancingVault.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";
import {BulkPlacer as BulkPlacerProbe} from "../../src/devnet/BulkPlacer.sol";

/// @notice Each test states one property from the security review (issue 13) and tries the
/// attack that broke it. Written against the contracts as they were; they must all fail there.

contract VaultDrainTest is Fixture {
    RebalancingVault internal vault;
    uint256 internal id;
    address internal attacker = makeAddr("attacker");

    function setUp() public override {
        super.setUp();
        vault = new RebalancingVault(admin, oracle);
        vm.prank(admin);
        vault.setPool(address(wethUsdc), true);
        address[] memory tokens = new address[](2);
        uint16[] memory weights = new uint16[](2);
        (tokens[0], tokens[1]) = (address(weth), address(usdc));
        (weights[0], weights[1]) = (5_000, 5_000);
        weth.mint(alice, 10e18);
        usdc.mint(alice, 27_000e6);
        vm.startPrank(alice);
        id = vault.createBasket(tokens, weights, 500, 300, 50);
        weth.approve(address(vault), type(uint256).max);
        usdc.approve(address(vault), type(uint256).max);
        vault.deposit(id, address(weth), 10e18);
        vault.deposit(id, address(usdc), 27_000e6);
        vm.stopPrank();
    }

    function _value() internal view returns (uint256) {
        return vault.balanceOf(id, address(weth)) * 2000 + vault.balanceOf(id, address(usdc)) * 1e12;
    }

    /// Property: one call only moves value from overweight to underweight, never more than
    /// restores the targets; the basket loses at most maxSlippage; the reward follows drift removed.
    function test_rebalanceCannotChurnTheBasket() public {
        uint256 before = _value();
        // 30 round trips WETH -> USDC -> WETH, then one trade that restores the targets.
        RebalancingVault.Trade[] memory t = new RebalancingVault.Trade[](61);
        for (uint256 i; i < 30; ++i) {
            t[2 * i] = RebalancingVault.Trade(address(wethUsdc), address(usdc), 2_000e6);
            t[2 * i + 1] = RebalancingVault.Trade(address(wethUsdc), address(weth), 0.97e18);
        }
        t[60] = RebalancingVault.Trade(address(wethUsdc), address(usdc), 3_500e6);
        uint256 rewardBefore = usdc.balanceOf(attacker) + weth.balanceOf(attacker) * 2000 / 1e12;
        vm.prank(attacker);
        try vault.rebalance(id, t) {
            uint256 reward = (usdc.balanceOf(attacker) + weth.balanceOf(attacker) * 2000 / 1e12) - rewardBefore;
            vm.assertGe(_value() * 10_000, before * (10_000 - 300), "basket lost more than maxSlippage");
            // Drift removed is at most 3,500 USD of value moved: 50 bps of it is 17.5 USD.
            vm.assertLe(reward, 20e6, "reward paid on volume");
        } catch {}
    }
}

contract VaultNominalDepositTest is Fixture {
    function test_depositCreditsWhatArrived() public {
        RebalancingVault vault = new RebalancingVault(admin, oracle);
        Taxed tax = new Taxed();
        vm.prank(admin);
        oracle.configureAsset(address(tax), 10, 500, 86_400);
        _setPrice(address(tax), 1e18);
        address[] memory tokens = new address[](2);
        uint16[] memory weights = new uint16[](2);
        (tokens[0], tokens[1]) = (address(tax), address(usdc));
        (weights[0], weights[1]) = (5_000, 5_000);
        tax.mint(alice, 100e18);
        vm.startPrank(alice);
        uint256 id = vault.createBasket(tokens, weights, 500, 100, 10);
        tax.approve(address(vault), type(uint256).max);
        try vault.deposit(id, address(tax), 100e18) {
            vm.assertLe(vault.balanceOf(id, address(tax)), tax.balanceOf(address(vault)), "credited more than held");
        } catch {}
        vm.stopPrank();
    }
}

contract Taxed is DevnetToken {
    constructor() DevnetToken("Taxed", "TAX", 18) {}

    function _update(address from, address to, uint256 value) internal override {
        if (from != address(0) && to != address(0)) {
            uint256 tax = value / 100;
            super._update(from, address(0), tax);
            value -= tax;
        }
        super._update(from, to, value);
    }
}

contract PoolFeeDecayTest is Fixture {
    /// Property: with no net price movement the fee returns to base on its half-life
    /// schedule, however often the pool is touched.
    function test_feeDecaysUnderSyncs() public {
        _swap(wethUsdc, bob, address(weth), 60e18); // a 12% move: fee at its cap
        vm.assertEq(wethUsdc.currentFee(), MAX_FEE, "fee at cap after the move");
        for (uint256 i; i < 40; ++i) {
            vm.warp(block.timestamp + 59);
            wethUsdc.sync();
        }
        // 40 * 59 s = 39 half-lives.
        vm.assertEq(wethUsdc.currentFee(), BASE_FEE, "fee back at base");
    }

    function test_feeDecaysUnderTwoWayFlow() public {
        _swap(wethUsdc, bob, address(weth), 60e18);
        for (uint256 i; i < 40; ++i) {
            vm.warp(block.timestamp + 30);
            uint256 out = _swap(wethUsdc, bob, address(weth), 1e18);
            vm.warp(block.timestamp + 29);
            _swap(wethUsdc, bob, address(usdc), out);
        }
        // Each round trip moves the price about 0.1% and back: the fee may carry that one
        // move (a few pips), never the sum of all of them.
        vm.assertLe(wethUsdc.currentFee(), BASE_FEE + 20 * FEE_PER_VOL_BPS, "fee pinned by churn");
    }
}

contract HostileOrderTest is BookFixture {
    function _fillBoth(uint256 hostile, uint16 hostileMarket, address hostilePool, uint256 honest)
        internal
        returns (uint256 filled)
    {
        OrderBook.FillGroup[] memory g = new OrderBook.FillGroup[](2);
        g[0].market = hostileMarket;
        g[0].path = _path(hostilePool);
        g[0].orderIds = _ids(hostile);
        g[1].market = sellWeth;
        g[1].path = _path(address(wethUsdc));
        g[1].orderIds = _ids(honest);
        vm.prank(keeper);
        try book.executeBatch(g, keeper) returns (uint256 n) {
            filled = n;
        } catch {}
    }

    /// Property: a TWAP's parameters are bounded at placement, and it never reverts a batch.
    function test_hostileTwapBlocksNothing() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Twap, 1e18, 1);
        p.slices = 2;
        p.interval = type(uint32).max;
        p.start = uint32(block.timestamp);
        vm.prank(bob);
        uint256 hostile;
        try book.placeOrder(p) returns (uint256 id) {
            hostile = id;
        } catch {
            return; // refused at placement: the property holds
        }
        uint256 honest = _limit(alice, 1e18, 1_900e6);
        uint256 before = usdc.balanceOf(alice);
        _fillBoth(hostile, sellWeth, address(wethUsdc), honest);
        vm.assertGt(usdc.balanceOf(alice), before, "honest order filled");
    }

    /// Property: an owner that cannot receive the output token makes no other group fail.
    function test_blacklistedOwnerBlocksNothing() public {
        Blacklist busd = new Blacklist();
        vm.prank(admin);
        oracle.configureAsset(address(busd), 10, 500, 86_400);
        _setPrice(address(busd), 1e18);
        LiquidityPool pool = _newPool(address(weth), 100e18, address(busd), 200_000e18);
        vm.prank(admin);
        book.setPool(address(pool), true);
        uint16 m = book.registerMarket(address(weth), address(busd));
        vm.prank(bob);
        uint256 hostile = book.placeOrder(_params(m, OrderBook.OrderType.Limit, 1e18, 1));
        busd.ban(bob);
        uint256 honest = _limit(alice, 1e18, 1_900e6);
        uint256 before = usdc.balanceOf(alice);
        _fillBoth(hostile, m, address(pool), honest);
        vm.assertGt(usdc.balanceOf(alice), before, "honest order filled");
    }

    /// Property: at most one iceberg clip per order per block, however the batch lists it.
    function test_icebergOneClipPerBlock() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Iceberg, 10e18, 1);
        p.triggerOrClip = 1e18;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        OrderBook.FillGroup[] memory g = new OrderBook.FillGroup[](5);
        for (uint256 i; i < 5; ++i) {
            g[i].market = sellWeth;
            g[i].path = _path(address(wethUsdc));
            g[i].orderIds = _ids(id);
        }
        vm.prank(keeper);
        book.executeBatch(g, keeper);
        vm.assertEq(book.getOrder(id).remaining, 9e18, "one clip in this block");
    }

    /// Property: a TWAP runs exactly the slices it was given.
    function test_twapRunsItsSliceCount() public {
        // 1,099 units of USDC in 100 slices: a slice of 10 leaves a remainder of 99.
        OrderBook.PlaceParams memory p = _params(buyWeth, OrderBook.OrderType.Twap, 1_099, 1);
        p.slices = 100;
        p.interval = 1;
        p.start = uint32(block.timestamp);
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        uint256 runs;
        while (book.getOrder(id).owner != address(0) && runs < 200) {
            _fill(buyWeth, address(wethUsdc), _ids(id));
            vm.warp(block.timestamp + 1);
            ++runs;
        }
        vm.assertEq(runs, 100, "slices run");
    }

    /// Property: refundExpired skips closed ids instead of reverting the whole list.
    function test_refundExpiredSkipsClosed() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1e30 / 1e18);
        p.expiry = uint32(block.timestamp + 10);
        vm.prank(alice);
        uint256 a = book.placeOrder(p);
        vm.prank(bob);
        uint256 b = book.placeOrder(p);
        vm.prank(alice);
        book.cancelOrder(a);
        vm.warp(block.timestamp + 11);
        uint256[] memory ids = new uint256[](2);
        (ids[0], ids[1]) = (a, b);
        uint256 before = weth.balanceOf(bob);
        try book.refundExpired(ids) {} catch {}
        vm.assertEq(weth.balanceOf(bob), before + 1e18, "open expired order refunded");
    }

    /// Property: junk markets cannot exhaust the market ids (listing is gated).
    function test_junkMarketsCannotBeListed() public {
        DevnetToken junk = new DevnetToken("Junk", "J", 18);
        vm.prank(bob);
        try book.registerMarket(address(junk), address(usdc)) returns (uint16) {
            vm.assertTrue(false, "anyone registered a market of an unpriced token");
        } catch {}
    }

    /// Property: ownership cannot be renounced (it would freeze pause and listing for good).
    function test_ownershipCannotBeRenounced() public {
        vm.prank(admin);
        try book.renounceOwnership() {} catch {}
        vm.assertEq(book.owner(), admin, "owner kept");
    }
}

/// @notice A keeper contract that pushes the pool, fills, and pushes back in one transaction.
contract Sandwicher {
    function run(OrderBook book, LiquidityPool pool, DevnetToken weth, DevnetToken usdc, uint256 push, uint256 id)
        external
    {
        (uint256 out,) = pool.getAmountOut(push, address(weth));
        weth.mint(address(pool), push);
        if (address(usdc) < address(weth)) pool.swap(out, 0, address(this), "");
        else pool.swap(0, out, address(this), "");
        OrderBook.FillGroup[] memory g = new OrderBook.FillGroup[](1);
        g[0].market = 1;
        g[0].path = new address[](1);
        g[0].path[0] = address(pool);
        g[0].orderIds = new uint256[](1);
        g[0].orderIds[0] = id;
        require(book.executeBatch(g, address(this)) == 1, "not filled");
        uint256 back = usdc.balanceOf(address(this));
        (uint256 wethBack,) = pool.getAmountOut(back, address(usdc));
        usdc.transfer(address(pool), back);
        if (address(weth) < address(usdc)) pool.swap(wethBack, 0, address(this), "");
        else pool.swap(0, wethBack, address(this), "");
    }
}

contract SandwichTest is BookFixture {
    /// Property: no transaction, whoever sends it, fills an order more than the market's
    /// tolerance below the oracle's rate.
    function test_keeperCannotSandwichItsFill() public {
        // A stop-loss for 30 WETH at 1,830 (trigger) with a floor of 1,750 per WETH.
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.StopLoss, 30e18, 52_500e6);
        p.triggerOrClip = 1_830e18;
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        // The market falls to 1,828 and the pool follows.
        _setPrice(address(weth), 1_828e18);
        _swap(wethUsdc, bob, address(weth), 46e18);
        Sandwicher s = new Sandwicher();
        uint256 before = usdc.balanceOf(alice);
        // The attacker pushes as far as the trader's floor still lets the fill through.
        for (uint256 push = 40e18; push != 0; push -= 1e17) {
            try s.run(book, wethUsdc, weth, usdc, push, id) {
                break;
            } catch {}
        }
        uint256 got = usdc.balanceOf(alice) - before;
        if (got == 0) return; // not filled: the property holds
        // Fair: 30 * 1,828 = 54,840 USDC; 3% tolerance and the 10 bps keeper fee below it.
        vm.assertGe(got, (54_840e6 * 9_700 / 10_000) * 9_990 / 10_000, "filled far below fair value");
    }
}

contract OracleBoundTest is Fixture {
    /// Property: the bound on change holds per block, not per call.
    function test_changeBoundPerBlock() public {
        address[] memory a = new address[](3);
        uint256[] memory p = new uint256[](3);
        (a[0], a[1], a[2]) = (address(weth), address(weth), address(weth));
        (p[0], p[1], p[2]) = (1_600e18, 1_280e18, 1_024e18);
        vm.prank(updater);
        try oracle.updatePrices(a, p) {} catch {}
        (, uint256 price,) = oracle.latestRound(address(weth));
        vm.assertGe(price, 1_600e18, "more than one bounded move in a block");
    }
}

contract DustDebtTest is MarketFixture {
    /// Property: debt the remaining collateral cannot cover is written off; a liquidator
    /// leaving dust cannot keep bad debt on the books.
    function test_dustCollateralDoesNotHideBadDebt() public {
        _openPosition(14_000e6);
        _moveWethTo(700e18); // 7k of collateral against 14k of debt: deep underwater
        // Repay what buys all but a few hundred million wei of the collateral: less than the
        // smallest repayment (1 USDC unit) would buy.
        uint256 repay = uint256(7_000e6) * 10_000 / 10_500;
        vm.prank(bob);
        try market.liquidate(alice, repay, bob) {} catch {}
        (uint256 coll, uint256 debt) = market.positionOf(alice);
        if (coll != 0 && debt != 0) {
            // What is left must still be liquidatable, so the rest can be written off.
            vm.prank(bob);
            try market.liquidate(alice, type(uint256).max, bob) {} catch {}
            (coll, debt) = market.positionOf(alice);
        }
        vm.assertEq(debt, 0, "bad debt left on the books");
        vm.assertGt(market.badDebt(), 0, "bad debt recorded");
    }
}

contract Blacklist is DevnetToken {
    mapping(address => bool) public banned;

    constructor() DevnetToken("Blacklisting USD", "BUSD", 18) {}

    function ban(address who) external {
        banned[who] = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        require(!banned[to] && !banned[from], "banned");
        super._update(from, to, value);
    }
}

contract CommitRevealTest is BookFixture {
    function _commitment(address who, OrderBook.PlaceParams memory p, bytes32 salt) internal pure returns (bytes32) {
        return keccak256(abi.encode(who, p, salt));
    }

    /// Property: copying someone's commitment cannot block their commit.
    function test_copiedCommitmentBlocksNothing() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1_900e6);
        bytes32 c = _commitment(alice, p, bytes32("salt"));
        vm.prank(bob);
        book.commitOrder(c); // seen in the mempool, sent first
        vm.prank(alice);
        try book.commitOrder(c) {} catch {
            vm.assertTrue(false, "owner's commit blocked by a copy");
        }
    }

    /// Property: a revealed order is fillable from the next block, not in its reveal block.
    function test_revealedOrderNotFillableInItsBlock() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1_900e6);
        vm.prank(alice);
        book.commitOrder(_commitment(alice, p, bytes32("salt")));
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + 12);
        vm.prank(alice);
        uint256 id = book.revealOrder(p, bytes32("salt"));
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 0, "filled in its reveal block");
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + 12);
        vm.assertEq(_fill(sellWeth, address(wethUsdc), _ids(id)), 1, "filled from the next block");
    }
}

contract CollateralCastTest is MarketFixture {
    /// Property: a deposit is credited in full or refused, never truncated.
    function test_hugeCollateralDepositIsNotTruncated() public {
        uint256 amount = (uint256(1) << 128) + 1;
        weth.mint(alice, amount);
        vm.prank(alice);
        try market.depositCollateral(amount) {
            (uint256 coll,) = market.positionOf(alice);
            vm.assertEq(coll, amount, "credited what was deposited");
        } catch {}
    }
}

contract BulkPlacerSweepTest is BookFixture {
    /// Property: refunds that come back to the bench placer can be taken out.
    function test_placerCanSweep() public {
        address placer = address(new BulkPlacerProbe(address(book)));
        weth.mint(placer, 1e18);
        (bool ok,) = placer.call(abi.encodeWithSignature("sweep(address,address)", address(weth), alice));
        vm.assertTrue(ok, "sweep exists");
        vm.assertEq(weth.balanceOf(placer), 0, "swept");
    }
}

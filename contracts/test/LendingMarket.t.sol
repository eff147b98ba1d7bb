// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Fixture} from "./utils/Fixture.sol";
import {LendingMarket} from "../src/LendingMarket.sol";
import {FlashLiquidator} from "../src/FlashLiquidator.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

abstract contract MarketFixture is Fixture {
    LendingMarket internal market;

    function setUp() public virtual override {
        super.setUp();
        market = new LendingMarket(
            IERC20(address(weth)),
            IERC20(address(usdc)),
            oracle,
            LendingMarket.Params({
                collateralFactorBps: 7_500,
                liquidationThresholdBps: 8_000,
                closeFactorBps: 5_000,
                liquidationBonusBps: 500,
                baseRatePerSecond: 0,
                slopePerSecond: 3e9 // about 10% a year at full utilization
            })
        );
        usdc.mint(lp, 10_000_000e6);
        vm.startPrank(lp);
        usdc.approve(address(market), type(uint256).max);
        market.supply(1_000_000e6);
        vm.stopPrank();
        _approveAll(alice);
        _approveAll(bob);
    }

    function _approveAll(address who) internal {
        weth.mint(who, 1_000e18);
        usdc.mint(who, 10_000_000e6);
        vm.startPrank(who);
        weth.approve(address(market), type(uint256).max);
        usdc.approve(address(market), type(uint256).max);
        vm.stopPrank();
    }

    /// @dev Alice posts 10 WETH (20k USD) and borrows `debt` USDC.
    function _openPosition(uint256 debt) internal {
        vm.startPrank(alice);
        market.depositCollateral(10e18);
        market.borrow(debt);
        vm.stopPrank();
    }

    /// @dev Walks the oracle down in steps within its per-update bound.
    function _moveWethTo(uint256 target) internal {
        uint256 p = oracle.getPrice(address(weth));
        while (p != target) {
            uint256 step = (p * 19) / 100;
            p = p > target ? (p - target > step ? p - step : target) : (target - p > step ? p + step : target);
            _setPrice(address(weth), p);
        }
    }
}

contract LendingMarketTest is MarketFixture {
    function test_constructor_rejectsUnsafeParams() public {
        LendingMarket.Params memory p = LendingMarket.Params(8_000, 9_600, 5_000, 500, 0, 0);
        vm.expectRevert(LendingMarket.InvalidParams.selector);
        new LendingMarket(IERC20(address(weth)), IERC20(address(usdc)), oracle, p); // threshold * (1+bonus) >= 1
    }

    function test_supplyWithdraw() public {
        uint256 shares = market.sharesOf(lp);
        vm.prank(lp);
        uint256 amount = market.withdraw(shares / 2);
        vm.assertEq(amount, 500_000e6, "half back");
        vm.expectRevert(abi.encodeWithSelector(LendingMarket.InsufficientShares.selector, shares, shares - shares / 2));
        vm.prank(lp);
        market.withdraw(shares);
        vm.expectRevert(LendingMarket.ZeroAmount.selector);
        market.supply(0);
    }

    function test_borrow_limitedByCollateralFactor() public {
        vm.startPrank(alice);
        market.depositCollateral(10e18);
        vm.expectRevert(abi.encodeWithSelector(LendingMarket.BorrowLimitExceeded.selector, 15_001e18, 15_000e18));
        market.borrow(15_001e6);
        market.borrow(15_000e6);
        vm.expectRevert(abi.encodeWithSelector(LendingMarket.InsufficientCash.selector, 2_000_000e6, 985_000e6));
        market.borrow(2_000_000e6);
        vm.stopPrank();
    }

    function test_withdrawCollateral_keepsLimit() public {
        _openPosition(10_000e6);
        vm.startPrank(alice);
        vm.expectRevert();
        market.withdrawCollateral(5e18);
        market.withdrawCollateral(3e18);
        vm.expectRevert(abi.encodeWithSelector(LendingMarket.InsufficientCollateral.selector, 8e18, 7e18));
        market.withdrawCollateral(8e18);
        vm.stopPrank();
    }

    function test_interestAccrues_andRepay() public {
        _openPosition(10_000e6);
        vm.warp(block.timestamp + 365 days);
        market.accrue();
        uint256 debt = market.debtOf(alice);
        vm.assertGt(debt, 10_000e6, "interest charged");
        vm.prank(bob);
        uint256 paid = market.repay(alice, type(uint256).max);
        vm.assertEq(paid, debt, "repay is capped at the debt");
        vm.assertEq(market.debtOf(alice), 0, "cleared");
        vm.expectRevert(LendingMarket.NoDebt.selector);
        market.repay(alice, 1);
    }

    function test_liquidate_healthyReverts() public {
        _openPosition(10_000e6);
        uint256 hf = market.healthFactor(alice);
        vm.expectRevert(abi.encodeWithSelector(LendingMarket.PositionHealthy.selector, hf));
        vm.prank(bob);
        market.liquidate(alice, 1_000e6, bob);
    }

    function test_liquidate_closeFactorAndBonus() public {
        _openPosition(15_000e6);
        _moveWethTo(1_800e18); // 18k * 0.8 = 14.4k < 15k
        vm.assertLt(market.healthFactor(alice), 1e18, "unhealthy");
        uint256 before = weth.balanceOf(bob);
        vm.prank(bob);
        (uint256 repaid, uint256 seized) = market.liquidate(alice, type(uint256).max, bob);
        vm.assertEq(repaid, 7_500e6, "close factor 50%");
        uint256 exact = (7_500e18 * 10_500) / 10_000 / 1_800;
        vm.assertLe(seized, exact, "bonus 5% at the oracle price, rounded for the borrower");
        vm.assertGe(seized + 1, exact, "rounded by at most one unit");
        vm.assertEq(weth.balanceOf(bob) - before, seized, "collateral to receiver");
        vm.assertGt(market.healthFactor(alice), 1e18, "healthier after");
    }

    function test_liquidate_underwaterWritesOffBadDebt() public {
        _openPosition(15_000e6);
        _moveWethTo(1_000e18); // collateral 10k < debt 15k
        vm.prank(bob);
        market.liquidate(alice, 7_500e6, bob);
        vm.prank(bob);
        (uint256 repaid, uint256 seized) = market.liquidate(alice, 7_500e6, bob);
        (uint256 collateral, uint256 debt) = market.positionOf(alice);
        vm.assertEq(collateral, 0, "all collateral taken");
        vm.assertEq(debt, 0, "rest written off");
        vm.assertGt(market.badDebt(), 0, "bad debt recorded");
        vm.assertGt(seized, 0, "seized");
        vm.assertGt(repaid, 0, "repaid");
    }

    function test_flashLiquidator_needsNoInventory() public {
        _openPosition(15_000e6);
        _moveWethTo(1_800e18);
        // Bring the pool in line with the oracle, as arbitrage would.
        _swap(wethUsdc, bob, address(weth), 52e18);
        FlashLiquidator liq = new FlashLiquidator();
        address keeperAddr = makeAddr("liquidation keeper");
        vm.assertEq(usdc.balanceOf(keeperAddr) + weth.balanceOf(keeperAddr), 0, "no inventory");
        vm.prank(keeperAddr);
        uint256 profit = liq.liquidate(wethUsdc, market, alice, 7_500e6, 1, keeperAddr);
        vm.assertGt(profit, 0, "profit in collateral");
        vm.assertEq(weth.balanceOf(keeperAddr), profit, "paid to keeper");
        vm.assertLt(market.debtOf(alice), 15_000e6, "debt repaid");
    }

    function test_flashLiquidator_rejectsStrangers() public {
        FlashLiquidator liq = new FlashLiquidator();
        vm.expectRevert(abi.encodeWithSelector(FlashLiquidator.UnexpectedCallback.selector, address(this)));
        liq.onFlashSwap(address(liq), 1, 0, abi.encode(market, alice));
    }

    /// @notice A position whose collateral buys less than one unit of debt is still closed:
    /// the repayment rounds to zero and the debt is written off.
    function test_liquidate_writesOffWhenRepaymentRoundsToZero() public {
        vm.startPrank(alice);
        market.depositCollateral(1e9); // 2e-6 USD of WETH
        market.borrow(1); // 1e-6 USD
        vm.stopPrank();
        _moveWethTo(900e18);
        vm.prank(bob);
        (uint256 repaid, uint256 seized) = market.liquidate(alice, type(uint256).max, bob);
        vm.assertEq(repaid, 0, "nothing to repay with");
        vm.assertEq(seized, 1e9, "dust taken");
        (, uint256 debt) = market.positionOf(alice);
        vm.assertEq(debt, 0, "written off");
        vm.assertEq(market.badDebt(), 1, "recorded");
    }
}

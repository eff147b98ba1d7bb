// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Fixture} from "./utils/Fixture.sol";
import {RebalancingVault} from "../src/RebalancingVault.sol";
import {PoolWhitelist} from "../src/PoolWhitelist.sol";

contract RebalancingVaultTest is Fixture {
    RebalancingVault internal vault;
    uint256 internal id;

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
        usdc.mint(alice, 20_000e6);
        vm.startPrank(alice);
        id = vault.createBasket(tokens, weights, 500, 100, 10);
        weth.approve(address(vault), type(uint256).max);
        usdc.approve(address(vault), type(uint256).max);
        vault.deposit(id, address(weth), 10e18);
        vault.deposit(id, address(usdc), 20_000e6);
        vm.stopPrank();
    }

    function _trade(address tokenIn, uint256 amountIn) internal view returns (RebalancingVault.Trade[] memory t) {
        t = new RebalancingVault.Trade[](1);
        t[0] = RebalancingVault.Trade(address(wethUsdc), tokenIn, amountIn);
    }

    function test_balancedBasketCannotBeTouched() public {
        vm.assertEq(vault.drift(id), 0, "on target");
        vm.expectRevert(abi.encodeWithSelector(RebalancingVault.DriftBelowThreshold.selector, 0, 500));
        vault.rebalance(id, _trade(address(weth), 1e18));
    }

    function test_rebalance_restoresWeightsAndPaysReward() public {
        _setPrice(address(weth), 2_300e18); // weth now ~53.5%
        _swap(wethUsdc, bob, address(usdc), 300_000e6); // pool follows the market
        uint256 driftBefore = vault.drift(id);
        vm.assertGe(driftBefore, 300, "drifted");
        // 10 WETH * 2300 = 23k vs 20k USDC: sell 0.65 WETH to even out.
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(RebalancingVault.DriftBelowThreshold.selector, driftBefore, 500));
        vault.rebalance(id, _trade(address(weth), 0.65e18));

        _setPrice(address(weth), 2_700e18);
        _swap(wethUsdc, bob, address(usdc), 25_000e6); // the pool at ~2,700 too
        vm.warp(block.timestamp + 600); // and calm again: its fee back at base
        // 27k vs 20k: sell 1.29 WETH (3,483 of the 3,500 USD over target).
        vm.prank(bob);
        vault.rebalance(id, _trade(address(weth), 1.29e18));
        vm.assertLt(vault.drift(id), 500, "back within threshold");
        vm.assertGt(usdc.balanceOf(bob), 0, "keeper rewarded");
    }

    function test_rebalance_rejectsBadTrades() public {
        _setPrice(address(weth), 2_300e18);
        _setPrice(address(weth), 2_700e18);
        // Pool still at 2000: selling WETH there loses 26% against the oracle.
        vm.expectRevert();
        vault.rebalance(id, _trade(address(weth), 1.3e18));

        _swap(wethUsdc, bob, address(usdc), 350_000e6);
        vm.expectRevert(); // too small a trade leaves the basket drifted
        vault.rebalance(id, _trade(address(weth), 0.1e18));

        RebalancingVault.Trade[] memory t = _trade(address(weth), 1e18);
        t[0].pool = address(wethDai);
        vm.expectRevert(abi.encodeWithSelector(PoolWhitelist.PoolNotAllowed.selector, address(wethDai)));
        vault.rebalance(id, t);

        vm.expectRevert(abi.encodeWithSelector(RebalancingVault.NotInBasket.selector, id, address(dai)));
        vault.rebalance(id, _trade(address(dai), 1e18));
    }

    function test_rebalance_onlyTowardTargets() public {
        _setPrice(address(weth), 2_300e18);
        _setPrice(address(weth), 2_700e18);
        _swap(wethUsdc, bob, address(usdc), 325_000e6); // pool at ~2,700
        vm.warp(block.timestamp + 600);
        // WETH is over its target (27k vs 23.5k), USDC under.
        vm.expectRevert(abi.encodeWithSelector(RebalancingVault.NotOverweight.selector, address(usdc)));
        vault.rebalance(id, _trade(address(usdc), 1_000e6));
        // At most the 3,500 USD that WETH is over its target may be sold.
        vm.expectRevert(
            abi.encodeWithSelector(RebalancingVault.TradeTooLarge.selector, address(weth), 2 * 2_700e18, 3_500e18)
        );
        vault.rebalance(id, _trade(address(weth), 2e18));
        // Round trips are impossible: the second leg sells an underweight token.
        RebalancingVault.Trade[] memory t = new RebalancingVault.Trade[](2);
        t[0] = RebalancingVault.Trade(address(wethUsdc), address(weth), 1e18);
        t[1] = RebalancingVault.Trade(address(wethUsdc), address(usdc), 2_000e6);
        vm.expectRevert(abi.encodeWithSelector(RebalancingVault.NotOverweight.selector, address(usdc)));
        vault.rebalance(id, t);
    }

    function test_rebalance_rewardFollowsDriftRemoved() public {
        _setPrice(address(weth), 2_300e18);
        _setPrice(address(weth), 2_700e18);
        _swap(wethUsdc, bob, address(usdc), 325_000e6);
        vm.warp(block.timestamp + 600);
        // Two trades or one: the same value moved earns the same reward.
        RebalancingVault.Trade[] memory t = new RebalancingVault.Trade[](2);
        t[0] = RebalancingVault.Trade(address(wethUsdc), address(weth), 0.645e18);
        t[1] = RebalancingVault.Trade(address(wethUsdc), address(weth), 0.645e18);
        vm.prank(bob);
        uint256 reward = vault.rebalance(id, t);
        // 10 bps of the ~3,470 USD bought.
        vm.assertApproxEqRel(reward, 3.47e18, 0.01e18, "reward on value moved toward target");
    }

    function test_ownerOnly_and_withdraw() public {
        vm.expectRevert(abi.encodeWithSelector(RebalancingVault.NotBasketOwner.selector, id, bob));
        vm.prank(bob);
        vault.withdraw(id, address(weth), 1, bob);
        vm.prank(alice);
        vault.withdraw(id, address(weth), 10e18, alice);
        vm.assertEq(weth.balanceOf(alice), 10e18, "owner withdraws");
        vm.expectRevert(
            abi.encodeWithSelector(RebalancingVault.InsufficientBalance.selector, id, address(weth), 1, 0)
        );
        vm.prank(alice);
        vault.withdraw(id, address(weth), 1, alice);
    }

    function test_createBasket_validates() public {
        address[] memory tokens = new address[](2);
        uint16[] memory weights = new uint16[](2);
        (tokens[0], tokens[1]) = (address(weth), address(weth));
        (weights[0], weights[1]) = (5_000, 5_000);
        vm.expectRevert(RebalancingVault.InvalidBasket.selector);
        vault.createBasket(tokens, weights, 500, 100, 10);
        tokens[1] = address(usdc);
        weights[1] = 4_000;
        vm.expectRevert(RebalancingVault.InvalidBasket.selector);
        vault.createBasket(tokens, weights, 500, 100, 10);
    }

    function test_setTargets() public {
        uint16[] memory weights = new uint16[](2);
        (weights[0], weights[1]) = (8_000, 2_000);
        vm.prank(alice);
        vault.setTargets(id, weights);
        vm.assertEq(vault.drift(id), 3_000, "now far from the new targets");
    }
}

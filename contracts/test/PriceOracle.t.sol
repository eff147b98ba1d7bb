// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Fixture} from "./utils/Fixture.sol";
import {PriceOracle} from "../src/PriceOracle.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

contract PriceOracleTest is Fixture {
    function test_update_writesRoundAndPrice() public {
        (uint256 round, uint256 price, uint256 at) = oracle.latestRound(address(weth));
        vm.assertEq(round, 1, "first round");
        vm.assertEq(price, 2000e18, "price");
        vm.assertEq(at, block.timestamp, "timestamp");
        vm.assertEq(oracle.getPrice(address(weth)), 2000e18, "read");
    }

    function test_update_oncePerBlock() public {
        vm.warp(block.timestamp + 12);
        vm.startPrank(updater);
        vm.assertTrue(oracle.updatePrice(address(weth), 2_300e18), "first write of the block");
        vm.assertFalse(oracle.isUpdateDue(address(weth), 2_600e18), "not due again in this block");
        vm.assertFalse(oracle.updatePrice(address(weth), 2_600e18), "second write refused");
        vm.stopPrank();
        vm.assertEq(oracle.getPrice(address(weth)), 2_300e18, "one bounded move a block");
        vm.warp(block.timestamp + 12);
        vm.prank(updater);
        vm.assertTrue(oracle.updatePrice(address(weth), 2_600e18), "next block");
    }

    function test_renounceOwnership_disabled() public {
        vm.expectRevert(PriceOracle.RenounceDisabled.selector);
        vm.prank(admin);
        oracle.renounceOwnership();
    }

    function test_update_returnsEarlyWhenNotDue() public {
        vm.prank(updater);
        bool updated = oracle.updatePrice(address(weth), 2005e18); // 25 bps < 50 bps deviation
        vm.assertFalse(updated, "not due");
        (uint256 round,,) = oracle.latestRound(address(weth));
        vm.assertEq(round, 1, "no new round");
        vm.assertFalse(oracle.isUpdateDue(address(weth), 2005e18), "pre-check agrees");
    }

    function test_update_onDeviation() public {
        vm.warp(block.timestamp + 12);
        vm.assertTrue(oracle.isUpdateDue(address(weth), 2010e18), "50 bps is due");
        vm.prank(updater);
        vm.assertTrue(oracle.updatePrice(address(weth), 2010e18), "written");
        (uint256 round,,) = oracle.latestRound(address(weth));
        vm.assertEq(round, 2, "second round");
    }

    function test_update_onHeartbeat() public {
        vm.warp(block.timestamp + 3600);
        vm.prank(updater);
        vm.assertTrue(oracle.updatePrice(address(weth), 2000e18), "heartbeat update of an unchanged price");
    }

    function test_update_boundedChange() public {
        vm.warp(block.timestamp + 12);
        vm.expectRevert(
            abi.encodeWithSelector(PriceOracle.PriceChangeTooLarge.selector, address(weth), 2000e18, 2500e18, 2000)
        );
        vm.prank(updater);
        oracle.updatePrice(address(weth), 2500e18);
    }

    function test_update_errors() public {
        vm.expectRevert(abi.encodeWithSelector(PriceOracle.NotUpdater.selector, alice));
        vm.prank(alice);
        oracle.updatePrice(address(weth), 1);
        vm.startPrank(updater);
        vm.expectRevert(abi.encodeWithSelector(PriceOracle.AssetNotConfigured.selector, address(1)));
        oracle.updatePrice(address(1), 1);
        vm.expectRevert(PriceOracle.ZeroPrice.selector);
        oracle.updatePrice(address(weth), 0);
        vm.expectRevert(PriceOracle.LengthMismatch.selector);
        oracle.updatePrices(new address[](1), new uint256[](0));
        vm.stopPrank();
    }

    function test_batchUpdate_countsWrites() public {
        address[] memory assets = new address[](2);
        uint256[] memory prices = new uint256[](2);
        (assets[0], assets[1]) = (address(weth), address(usdc));
        (prices[0], prices[1]) = (2100e18, 1e18);
        vm.warp(block.timestamp + 12);
        vm.prank(updater);
        vm.assertEq(oracle.updatePrices(assets, prices), 1, "only the moved asset");
    }

    function test_read_staleAndUnset() public {
        vm.warp(block.timestamp + 3600 + 601);
        vm.expectRevert(abi.encodeWithSelector(PriceOracle.StalePrice.selector, address(weth), block.timestamp - 4201));
        oracle.getPrice(address(weth));
        (uint256 p, bool fresh) = oracle.tryGetPrice(address(weth));
        vm.assertEq(p, 2000e18, "still reported");
        vm.assertFalse(fresh, "but stale");
        vm.expectRevert(abi.encodeWithSelector(PriceOracle.PriceNotSet.selector, address(7)));
        oracle.getPrice(address(7));
    }

    function test_admin_onlyOwner() public {
        vm.startPrank(alice);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, alice));
        oracle.setUpdater(alice, true);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, alice));
        oracle.configureAsset(address(weth), 1, 1, 1);
        vm.stopPrank();
        vm.expectRevert(PriceOracle.InvalidConfig.selector);
        vm.prank(admin);
        oracle.configureAsset(address(weth), 100, 50, 60);
    }

    function test_reconfigure_keepsPrice() public {
        vm.prank(admin);
        oracle.configureAsset(address(weth), 100, 1000, 60);
        (uint16 dev, uint16 maxChange, uint32 hb) = oracle.assetConfig(address(weth));
        vm.assertEq(dev, 100, "deviation");
        vm.assertEq(maxChange, 1000, "max change");
        vm.assertEq(hb, 60, "heartbeat");
        vm.assertEq(oracle.getPrice(address(weth)), 2000e18, "price kept");
    }

    /// @notice Fuzz: an accepted update never moves the price more than the bound.
    function testFuzz_changeBound(uint256 price) public {
        price = bound(price, 1, 10_000e18);
        vm.warp(block.timestamp + 12);
        vm.prank(updater);
        try oracle.updatePrice(address(weth), price) returns (bool updated) {
            uint256 stored = oracle.getPrice(address(weth));
            uint256 diff = stored > 2000e18 ? stored - 2000e18 : 2000e18 - stored;
            vm.assertLe(diff * 10_000, 2000e18 * uint256(2_000), "within 20%");
            if (!updated) vm.assertEq(stored, 2000e18, "unchanged when not due");
        } catch (bytes memory err) {
            vm.assertEq(bytes4(err), PriceOracle.PriceChangeTooLarge.selector, "only the bound rejects");
        }
    }
}

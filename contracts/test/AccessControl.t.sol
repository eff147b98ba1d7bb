// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {BookFixture} from "./utils/BookFixture.sol";
import {OrderBook} from "../src/OrderBook.sol";
import {PoolWhitelist} from "../src/PoolWhitelist.sol";
import {PriceOracle} from "../src/PriceOracle.sol";
import {RebalancingVault} from "../src/RebalancingVault.sol";
import {FlashLiquidator} from "../src/FlashLiquidator.sol";
import {BulkPlacer} from "../src/devnet/BulkPlacer.sol";
import {DevnetToken} from "../src/devnet/DevnetToken.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

/// @notice One test per row of the README's access-control table: the callers a function
/// allows succeed, and a stranger is refused with a named error.
contract AccessControlTest is BookFixture {
    address internal stranger = makeAddr("stranger");

    function _unauthorized(address who) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, who);
    }

    // ------------------------------------------------------------- OrderBook

    function test_acl_book_setPool_owner() public {
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        book.setPool(address(1), true);
        vm.prank(admin);
        book.setPool(address(1), true);
        vm.assertTrue(book.isPool(address(1)), "listed by the owner");
    }

    function test_acl_book_setGuardian_owner() public {
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        book.setGuardian(stranger);
        vm.prank(admin);
        book.setGuardian(bob);
        vm.assertEq(book.guardian(), bob, "set by the owner");
    }

    function test_acl_book_pause_guardianOrOwner_unpause_owner() public {
        vm.prank(admin);
        book.setGuardian(bob);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.NotGuardian.selector, stranger));
        vm.prank(stranger);
        book.pause();
        vm.prank(bob);
        book.pause();
        vm.expectRevert(_unauthorized(bob));
        vm.prank(bob);
        book.unpause();
        vm.prank(admin);
        book.unpause();
        vm.prank(admin);
        book.pause();
        vm.assertTrue(book.paused(), "the owner pauses too");
    }

    function test_acl_book_setMarketTolerance_owner() public {
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        book.setMarketTolerance(sellWeth, 10_000);
        vm.prank(admin);
        book.setMarketTolerance(sellWeth, 100);
        vm.assertEq(book.getMarket(sellWeth).toleranceBps, 100, "set by the owner");
    }

    function test_acl_book_registerMarket_anyoneForPricedTokens_ownerForAny() public {
        DevnetToken unpriced = new DevnetToken("U", "U", 18);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.MarketNotPriced.selector, address(unpriced)));
        vm.prank(stranger);
        book.registerMarket(address(unpriced), address(usdc));
        vm.prank(stranger);
        book.registerMarket(address(dai), address(weth)); // both priced: anyone
        vm.prank(admin);
        book.registerMarket(address(unpriced), address(usdc));
    }

    function test_acl_book_ownership_twoStep_neverRenounced() public {
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        book.transferOwnership(stranger);
        vm.prank(admin);
        book.transferOwnership(bob);
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        book.acceptOwnership();
        vm.prank(bob);
        book.acceptOwnership();
        vm.expectRevert(PoolWhitelist.RenounceDisabled.selector);
        vm.prank(bob);
        book.renounceOwnership();
    }

    function test_acl_book_cancel_orderOwner() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        vm.expectRevert(abi.encodeWithSelector(OrderBook.NotOrderOwner.selector, id, stranger));
        vm.prank(stranger);
        book.cancelOrder(id);
        vm.prank(admin); // not even the admin
        vm.expectRevert(abi.encodeWithSelector(OrderBook.NotOrderOwner.selector, id, admin));
        book.cancelOrder(id);
        vm.prank(alice);
        book.cancelOrder(id);
    }

    function test_acl_book_refundExpired_anyonePaysTheOwner() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        p.expiry = uint32(block.timestamp + 10);
        vm.prank(alice);
        uint256 id = book.placeOrder(p);
        vm.warp(block.timestamp + 11);
        uint256 before = weth.balanceOf(alice);
        vm.prank(stranger);
        book.refundExpired(_ids(id));
        vm.assertEq(weth.balanceOf(alice), before + 1e18, "refund goes to the owner, whoever calls");
        vm.assertEq(weth.balanceOf(stranger), 0, "the caller gets nothing");
    }

    function test_acl_book_claim_creditedOwnerOnly() public {
        vm.expectRevert(abi.encodeWithSelector(OrderBook.NothingToClaim.selector, address(usdc)));
        vm.prank(stranger);
        book.claim(address(usdc), stranger);
    }

    function test_acl_book_fillGroup_selfOnly() public {
        OrderBook.FillGroup[] memory g = _group(sellWeth, address(wethUsdc), _ids(1));
        vm.expectRevert(OrderBook.OnlySelf.selector);
        vm.prank(stranger);
        book.fillGroup(g[0], stranger, stranger);
    }

    function test_acl_book_executeBatch_anyoneWithinBounds() public {
        uint256 id = _limit(alice, 1e18, 1_900e6);
        vm.prank(stranger);
        vm.assertEq(book.executeBatch(_group(sellWeth, address(wethUsdc), _ids(id)), stranger), 1, "anyone fills");
        vm.prank(admin);
        book.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vm.prank(stranger);
        book.executeBatch(_group(sellWeth, address(wethUsdc), _ids(id)), stranger);
    }

    function test_acl_book_reveal_committerOnly() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1_900e6);
        bytes32 c = book.commitmentOf(alice, p, bytes32("s"));
        vm.prank(alice);
        book.commitOrder(c);
        vm.roll(block.number + 1);
        bytes32 asStranger = book.commitmentOf(stranger, p, bytes32("s"));
        vm.expectRevert(abi.encodeWithSelector(OrderBook.CommitmentNotFound.selector, asStranger));
        vm.prank(stranger);
        book.revealOrder(p, bytes32("s"));
        vm.prank(alice);
        book.revealOrder(p, bytes32("s"));
    }

    // ------------------------------------------------------------ PriceOracle

    function test_acl_oracle_configure_owner() public {
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        oracle.configureAsset(address(weth), 1, 1, 1);
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        oracle.setUpdater(stranger, true);
        vm.expectRevert(PriceOracle.RenounceDisabled.selector);
        vm.prank(admin);
        oracle.renounceOwnership();
    }

    function test_acl_oracle_update_updatersOnly() public {
        vm.warp(block.timestamp + 12);
        vm.expectRevert(abi.encodeWithSelector(PriceOracle.NotUpdater.selector, stranger));
        vm.prank(stranger);
        oracle.updatePrice(address(weth), 2_001e18);
        vm.prank(updater);
        vm.assertTrue(oracle.updatePrice(address(weth), 2_100e18), "an updater writes");
    }

    // ------------------------------------------------------- RebalancingVault

    function test_acl_vault_setPool_owner_basket_ownerOnly() public {
        RebalancingVault vault = new RebalancingVault(admin, oracle);
        vm.expectRevert(_unauthorized(stranger));
        vm.prank(stranger);
        vault.setPool(address(wethUsdc), true);
        address[] memory tokens = new address[](2);
        uint16[] memory weights = new uint16[](2);
        (tokens[0], tokens[1], weights[0], weights[1]) = (address(weth), address(usdc), 5_000, 5_000);
        vm.prank(alice);
        uint256 id = vault.createBasket(tokens, weights, 500, 100, 10);
        bytes memory notOwner = abi.encodeWithSelector(RebalancingVault.NotBasketOwner.selector, id, stranger);
        vm.startPrank(stranger);
        vm.expectRevert(notOwner);
        vault.setTargets(id, weights);
        vm.expectRevert(notOwner);
        vault.deposit(id, address(weth), 1);
        vm.expectRevert(notOwner);
        vault.withdraw(id, address(weth), 0, stranger);
        vm.stopPrank();
    }

    // -------------------------------------------------------- FlashLiquidator

    function test_acl_flashLiquidator_callbackFromItsPoolOnly() public {
        FlashLiquidator fl = new FlashLiquidator();
        vm.expectRevert(abi.encodeWithSelector(FlashLiquidator.UnexpectedCallback.selector, stranger));
        vm.prank(stranger);
        fl.onFlashSwap(address(fl), 1, 0, "");
    }

    // ------------------------------------------------------------- BulkPlacer

    function test_acl_bulkPlacer_operatorOnly() public {
        BulkPlacer placer = new BulkPlacer(address(book));
        vm.startPrank(stranger);
        vm.expectRevert(abi.encodeWithSelector(BulkPlacer.NotOperator.selector, stranger));
        placer.approve(IERC20(address(weth)));
        vm.expectRevert(abi.encodeWithSelector(BulkPlacer.NotOperator.selector, stranger));
        placer.sweep(IERC20(address(weth)), stranger);
        vm.expectRevert(abi.encodeWithSelector(BulkPlacer.NotOperator.selector, stranger));
        placer.cancel(new uint256[](0));
        vm.stopPrank();
    }
}

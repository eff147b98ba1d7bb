// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {BookFixture} from "./utils/BookFixture.sol";
import {OrderBook} from "../src/OrderBook.sol";
import {BulkPlacer} from "../src/devnet/BulkPlacer.sol";

contract BulkPlacerTest is BookFixture {
    BulkPlacer internal placer;

    function setUp() public override {
        super.setUp();
        placer = new BulkPlacer(address(book));
        weth.mint(address(placer), 100e18);
        placer.approve(weth);
    }

    function test_place_givesConsecutiveIdsItOwns() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        uint256 first = placer.place(abi.encodeCall(OrderBook.placeOrder, (p)), 5);
        vm.assertEq(book.nextOrderId(), first + 5, "five consecutive ids");
        vm.assertEq(book.getOrder(first + 4).owner, address(placer), "owned by the placer");
        uint256[] memory ids = new uint256[](2);
        ids[0] = first;
        ids[1] = first + 1;
        placer.cancel(ids);
        vm.assertEq(book.getOrder(first).remaining, 0, "cancelled");
        vm.assertEq(weth.balanceOf(address(placer)), 97e18, "two refunds came back");
    }

    function test_placeOrderSelectorIsTheBooks() public view {
        vm.assertEq(placer.PLACE_ORDER(), OrderBook.placeOrder.selector, "selector");
    }

    function test_onlyItsDeployerDrivesIt() public {
        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1);
        bytes memory call_ = abi.encodeCall(OrderBook.placeOrder, (p));
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(BulkPlacer.NotOperator.selector, alice));
        placer.place(call_, 1);
        vm.expectRevert(BulkPlacer.NotPlaceOrder.selector);
        placer.place(abi.encodeCall(OrderBook.cancelOrder, (1)), 1);
    }
}

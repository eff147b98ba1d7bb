// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Fixture} from "./Fixture.sol";
import {OrderBook} from "../../src/OrderBook.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";

abstract contract BookFixture is Fixture {
    OrderBook internal book;
    uint16 internal sellWeth; // WETH -> USDC
    uint16 internal buyWeth; // USDC -> WETH
    uint16 internal sellWethForDai; // WETH -> DAI

    function setUp() public virtual override {
        super.setUp();
        book = new OrderBook(admin, oracle);
        vm.startPrank(admin);
        book.setPool(address(wethUsdc), true);
        book.setPool(address(wethUsdc2), true);
        book.setPool(address(daiUsdc), true);
        book.setPool(address(wethDai), true);
        vm.stopPrank();
        sellWeth = book.registerMarket(address(weth), address(usdc));
        buyWeth = book.registerMarket(address(usdc), address(weth));
        sellWethForDai = book.registerMarket(address(weth), address(dai));
        _fund(alice);
        _fund(bob);
    }

    function _fund(address who) internal {
        weth.mint(who, 1_000_000e18);
        usdc.mint(who, 1_000_000_000e6);
        dai.mint(who, 1_000_000_000e18);
        vm.startPrank(who);
        weth.approve(address(book), type(uint256).max);
        usdc.approve(address(book), type(uint256).max);
        dai.approve(address(book), type(uint256).max);
        vm.stopPrank();
    }

    function _params(uint16 market, OrderBook.OrderType kind, uint256 amountIn, uint256 minOut)
        internal
        pure
        returns (OrderBook.PlaceParams memory p)
    {
        p.market = market;
        p.kind = kind;
        p.amountIn = uint96(amountIn);
        p.minAmountOut = uint96(minOut);
        p.keeperFeeBps = 10;
    }

    function _limit(address who, uint256 amountIn, uint256 minOut) internal returns (uint256) {
        vm.prank(who);
        return book.placeOrder(_params(sellWeth, OrderBook.OrderType.Limit, amountIn, minOut));
    }

    function _group(uint16 market, address pool, uint256[] memory ids)
        internal
        pure
        returns (OrderBook.FillGroup[] memory groups)
    {
        groups = new OrderBook.FillGroup[](1);
        groups[0].market = market;
        groups[0].path = _path(pool);
        groups[0].orderIds = ids;
    }

    function _fill(uint16 market, address pool, uint256[] memory ids) internal returns (uint256 filled) {
        vm.prank(keeper);
        filled = book.executeBatch(_group(market, pool, ids), keeper);
    }
}

/// @dev Takes 1% of every transfer: the book must refuse it.
contract FeeOnTransferToken is DevnetToken {
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

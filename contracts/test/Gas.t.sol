// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {BookFixture} from "./utils/BookFixture.sol";
import {OrderBook} from "../src/OrderBook.sol";
import {LendingMarket} from "../src/LendingMarket.sol";
import {FlashLiquidator} from "../src/FlashLiquidator.sol";
import {RebalancingVault} from "../src/RebalancingVault.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice One operation per test, state prepared in setUp, for `forge snapshot --isolate`
/// (each call its own transaction, so storage is cold as on chain). The checked-in
/// .gas-snapshot is compared by the test command: a regression fails it.
contract GasTest is BookFixture {
    uint256[] internal tenIds;
    uint256 internal oneId;
    uint256 internal twapId;
    uint256 internal icebergId;
    uint256 internal stopId;
    OrderBook.FillGroup[] internal groupTen;
    LendingMarket internal market;
    FlashLiquidator internal liquidator;
    RebalancingVault internal vault;
    uint256 internal basket;
    OrderBook.PlaceParams internal limitParams;

    function setUp() public override {
        super.setUp();
        // A later block, and every pool touched once, so price accumulators are non-zero as
        // on any live pool (a first write of a zero slot would be counted otherwise).
        vm.warp(block.timestamp + 12);
        wethUsdc.sync();
        wethUsdc2.sync();
        daiUsdc.sync();
        wethDai.sync();
        for (uint256 i; i < 10; ++i) {
            address trader = address(uint160(0xa000 + i));
            _fund(trader);
            tenIds.push(_limit(trader, 1e18, 1_900e6));
        }
        oneId = _limit(alice, 1e18, 1_900e6);

        OrderBook.PlaceParams memory p = _params(sellWeth, OrderBook.OrderType.Twap, 10e18, 19_000e6);
        (p.slices, p.interval, p.start) = (10, 60, uint32(block.timestamp));
        vm.prank(bob);
        twapId = book.placeOrder(p);
        p = _params(sellWeth, OrderBook.OrderType.Iceberg, 10e18, 19_000e6);
        p.triggerOrClip = 1e18;
        vm.prank(bob);
        icebergId = book.placeOrder(p);
        p = _params(sellWeth, OrderBook.OrderType.StopLoss, 1e18, 1_700e6);
        p.triggerOrClip = 1_950e18;
        vm.prank(bob);
        stopId = book.placeOrder(p);
        _setPrice(address(weth), 1_940e18);
        limitParams = _params(sellWeth, OrderBook.OrderType.Limit, 1e18, 1_900e6);

        // Pre-paid input for the bare swap (Uniswap V2's calling pattern).
        weth.mint(address(wethUsdc2), 1e18);

        _setUpLending();
        _setUpVault();
        // Each measured call runs in a fresh block, as on chain.
        vm.warp(block.timestamp + 12);
    }

    function _setUpLending() internal {
        market = new LendingMarket(
            IERC20(address(weth)),
            IERC20(address(usdc)),
            oracle,
            LendingMarket.Params(7_500, 8_000, 5_000, 500, 0, 0)
        );
        liquidator = new FlashLiquidator();
        usdc.mint(lp, 1_000_000e6);
        vm.startPrank(lp);
        usdc.approve(address(market), type(uint256).max);
        market.supply(1_000_000e6);
        vm.stopPrank();
        vm.startPrank(alice);
        weth.approve(address(market), type(uint256).max);
        market.depositCollateral(10e18);
        market.borrow(14_500e6);
        vm.stopPrank();
        _setPrice(address(weth), 1_780e18);
        usdc.mint(bob, 100_000e6);
        vm.prank(bob);
        usdc.approve(address(market), type(uint256).max);
    }

    function _setUpVault() internal {
        vault = new RebalancingVault(admin, oracle);
        vm.prank(admin);
        vault.setPool(address(wethUsdc2), true);
        address[] memory tokens = new address[](2);
        uint16[] memory weights = new uint16[](2);
        (tokens[0], tokens[1]) = (address(weth), address(usdc));
        (weights[0], weights[1]) = (5_000, 5_000);
        vm.startPrank(alice);
        basket = vault.createBasket(tokens, weights, 300, 300, 10);
        weth.approve(address(vault), type(uint256).max);
        usdc.approve(address(vault), type(uint256).max);
        vault.deposit(basket, address(weth), 10e18);
        vault.deposit(basket, address(usdc), 12_000e6);
        vm.stopPrank();
    }

    function test_gas_swap() public {
        (uint256 out,) = wethUsdc2.getAmountOut(1e18, address(weth));
        if (address(usdc) < address(weth)) wethUsdc2.swap(out, 0, alice, "");
        else wethUsdc2.swap(0, out, alice, "");
    }

    function test_gas_placeLimit() public {
        vm.prank(alice);
        book.placeOrder(limitParams);
    }

    function test_gas_cancel() public {
        vm.prank(alice);
        book.cancelOrder(oneId);
    }

    function test_gas_limitFill_single() public {
        _fill(sellWeth, address(wethUsdc), _ids(oneId));
    }

    function test_gas_limitFill_single_atLeast() public {
        vm.prank(keeper);
        book.executeBatchAtLeast(_group(sellWeth, address(wethUsdc), _ids(oneId)), keeper, 1);
    }

    function test_gas_limitFill_batch10() public {
        _fill(sellWeth, address(wethUsdc), tenIds);
    }

    function test_gas_twapSlice() public {
        _fill(sellWeth, address(wethUsdc), _ids(twapId));
    }

    function test_gas_icebergClip() public {
        _fill(sellWeth, address(wethUsdc), _ids(icebergId));
    }

    function test_gas_stopLossFill() public {
        _fill(sellWeth, address(wethUsdc), _ids(stopId));
    }

    function test_gas_liquidation() public {
        vm.prank(bob);
        market.liquidate(alice, 7_500e6, bob);
    }

    function test_gas_flashLiquidation() public {
        vm.prank(keeper);
        liquidator.liquidate(wethUsdc, market, alice, 7_000e6, 0, keeper);
    }

    function test_gas_oracleUpdate() public {
        vm.prank(updater);
        oracle.updatePrice(address(weth), 1_700e18);
    }

    function test_gas_oracleUpdate_notDue() public {
        vm.prank(updater);
        oracle.updatePrice(address(weth), 1_781e18);
    }

    function test_gas_vaultRebalance() public {
        RebalancingVault.Trade[] memory t = new RebalancingVault.Trade[](1);
        t[0] = RebalancingVault.Trade(address(wethUsdc2), address(weth), 1.4e18);
        vm.prank(keeper);
        vault.rebalance(basket, t);
    }
}

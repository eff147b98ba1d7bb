// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "./Test.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";
import {PriceOracle} from "../../src/PriceOracle.sol";
import {LiquidityPool} from "../../src/LiquidityPool.sol";
import {OrderBook} from "../../src/OrderBook.sol";

/// @notice A small market: WETH (18 dp), USDC (6 dp), DAI (18 dp) at 2000 USD per WETH,
/// two WETH/USDC pools (so routing has a choice), a DAI/USDC and a WETH/DAI pool for two hops.
abstract contract Fixture is Test {
    uint24 internal constant BASE_FEE = 3000; // 0.30%
    uint24 internal constant MAX_FEE = 10_000; // 1.00%
    uint24 internal constant FEE_PER_VOL_BPS = 50;
    uint32 internal constant HALF_LIFE = 60;

    address internal admin = makeAddr("admin");
    address internal keeper = makeAddr("keeper");
    address internal updater = makeAddr("updater");
    address internal alice = makeAddr("alice");
    address internal bob = makeAddr("bob");
    address internal lp = makeAddr("lp");

    DevnetToken internal weth;
    DevnetToken internal usdc;
    DevnetToken internal dai;
    PriceOracle internal oracle;
    LiquidityPool internal wethUsdc;
    LiquidityPool internal wethUsdc2;
    LiquidityPool internal daiUsdc;
    LiquidityPool internal wethDai;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        weth = new DevnetToken("Wrapped Ether", "WETH", 18);
        usdc = new DevnetToken("USD Coin", "USDC", 6);
        dai = new DevnetToken("Dai", "DAI", 18);

        oracle = new PriceOracle(admin, 600);
        vm.startPrank(admin);
        oracle.setUpdater(updater, true);
        oracle.configureAsset(address(weth), 50, 2_000, 3600);
        oracle.configureAsset(address(usdc), 10, 500, 86_400);
        oracle.configureAsset(address(dai), 10, 500, 86_400);
        vm.stopPrank();
        _setPrice(address(weth), 2000e18);
        _setPrice(address(usdc), 1e18);
        _setPrice(address(dai), 1e18);

        wethUsdc = _newPool(address(weth), 1_000e18, address(usdc), 2_000_000e6);
        wethUsdc2 = _newPool(address(weth), 100e18, address(usdc), 200_000e6);
        daiUsdc = _newPool(address(dai), 2_000_000e18, address(usdc), 2_000_000e6);
        wethDai = _newPool(address(weth), 1_000e18, address(dai), 2_000_000e18);
    }

    /// @dev The oracle takes one write per asset per block: a second one in the same test
    /// block moves the clock a second first.
    function _setPrice(address asset, uint256 price) internal {
        (,, uint256 at) = oracle.latestRound(asset);
        if (at == block.timestamp) vm.warp(block.timestamp + 1);
        vm.prank(updater);
        oracle.updatePrice(asset, price);
    }

    function _newPool(address a, uint256 amountA, address b, uint256 amountB) internal returns (LiquidityPool pool) {
        (address t0, address t1) = a < b ? (a, b) : (b, a);
        pool = new LiquidityPool(t0, t1, BASE_FEE, MAX_FEE, FEE_PER_VOL_BPS, HALF_LIFE);
        _addLiquidity(pool, a, amountA, b, amountB);
    }

    function _addLiquidity(LiquidityPool pool, address a, uint256 amountA, address b, uint256 amountB) internal {
        DevnetToken(a).mint(address(pool), amountA);
        DevnetToken(b).mint(address(pool), amountB);
        pool.mint(lp);
    }

    /// @dev Plain exact-input swap by `who` through one pool (a trader moving the market).
    function _swap(LiquidityPool pool, address who, address tokenIn, uint256 amountIn) internal returns (uint256 out) {
        address tokenOut;
        (out, tokenOut) = pool.getAmountOut(amountIn, tokenIn);
        DevnetToken(tokenIn).mint(address(pool), amountIn);
        if (tokenOut < tokenIn) pool.swap(out, 0, who, "");
        else pool.swap(0, out, who, "");
    }

    function _path(address p) internal pure returns (address[] memory path) {
        path = new address[](1);
        path[0] = p;
    }

    function _ids(uint256 a) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = a;
    }
}

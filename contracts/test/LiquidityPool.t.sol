// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Fixture} from "./utils/Fixture.sol";
import {LiquidityPool} from "../src/LiquidityPool.sol";
import {IFlashSwapCallee} from "../src/interfaces/IFlashSwapCallee.sol";
import {DevnetToken} from "../src/devnet/DevnetToken.sol";

contract FlashBorrower is IFlashSwapCallee {
    bool internal repay;

    constructor(bool repay_) {
        repay = repay_;
    }

    function onFlashSwap(address, uint256 amount0Out, uint256, bytes calldata) external {
        LiquidityPool pool = LiquidityPool(msg.sender);
        uint256 owed = pool.getAmountIn(amount0Out, pool.token1());
        if (repay) DevnetToken(pool.token1()).mint(msg.sender, owed);
    }
}

contract LiquidityPoolTest is Fixture {
    function test_constructor_rejectsBadConfig() public {
        vm.expectRevert(LiquidityPool.InvalidTokens.selector);
        new LiquidityPool(address(2), address(1), 3000, 3000, 0, 60);
        vm.expectRevert(LiquidityPool.InvalidFeeConfig.selector);
        new LiquidityPool(address(1), address(2), 5000, 4000, 0, 60);
        vm.expectRevert(LiquidityPool.InvalidFeeConfig.selector);
        new LiquidityPool(address(1), address(2), 3000, 4000, 0, 0);
    }

    function test_mint_locksMinimumLiquidity() public {
        vm.assertEq(wethUsdc.balanceOf(address(0xdEaD)), 1000, "minimum liquidity locked");
        (uint256 r0, uint256 r1,) = wethUsdc.getReserves();
        vm.assertGt(r0 * r1, 0, "reserves set");
    }

    function test_mint_proRata_and_burn() public {
        uint256 supply = wethUsdc.totalSupply();
        _addLiquidity(wethUsdc, address(weth), 100e18, address(usdc), 200_000e6);
        uint256 minted = wethUsdc.balanceOf(lp) - (supply - 1000);
        vm.assertApproxEqRel(minted, supply / 10, 1e12, "10% more liquidity, 10% more shares");

        vm.prank(lp);
        wethUsdc.transfer(address(wethUsdc), minted);
        (uint256 a0, uint256 a1) = wethUsdc.burn(alice);
        (uint256 wethOut, uint256 usdcOut) = address(weth) < address(usdc) ? (a0, a1) : (a1, a0);
        vm.assertApproxEqRel(wethOut, 100e18, 1e12, "weth back");
        vm.assertApproxEqRel(usdcOut, 200_000e6, 1e12, "usdc back");
    }

    function test_mint_and_burn_errors() public {
        vm.expectRevert(LiquidityPool.InsufficientLiquidityMinted.selector);
        wethUsdc.mint(alice);
        vm.expectRevert(LiquidityPool.InsufficientLiquidityBurned.selector);
        wethUsdc.burn(alice);
    }

    function test_swap_matchesQuote() public {
        (uint256 out,) = wethUsdc.getAmountOut(1e18, address(weth));
        uint256 got = _swap(wethUsdc, alice, address(weth), 1e18);
        vm.assertEq(usdc.balanceOf(alice), got, "paid out");
        vm.assertEq(got, out, "quote holds");
        vm.assertGt(out, 1_980e6, "about 2000 less 0.3%");
    }

    function test_swap_errors() public {
        vm.expectRevert(LiquidityPool.InsufficientOutputAmount.selector);
        wethUsdc.swap(0, 0, alice, "");
        vm.expectRevert(LiquidityPool.InsufficientLiquidity.selector);
        wethUsdc.swap(type(uint104).max, 0, alice, "");
        vm.expectRevert(LiquidityPool.InvalidRecipient.selector);
        wethUsdc.swap(1, 0, address(weth), "");
        vm.expectRevert(LiquidityPool.InsufficientInputAmount.selector);
        wethUsdc.swap(1, 0, alice, "");
        (uint256 out,) = wethUsdc.getAmountOut(1e18, address(weth));
        weth.mint(address(wethUsdc), 1e18);
        (uint256 o0, uint256 o1) = address(usdc) < address(weth) ? (out + 1, uint256(0)) : (uint256(0), out + 1);
        vm.expectRevert(LiquidityPool.InvariantViolated.selector);
        wethUsdc.swap(o0, o1, alice, "");
        vm.expectRevert(abi.encodeWithSelector(LiquidityPool.NotPoolToken.selector, address(dai)));
        wethUsdc.getAmountOut(1, address(dai));
    }

    function test_dynamicFee_risesWithVolatilityAndDecays() public {
        vm.assertEq(wethUsdc.currentFee(), BASE_FEE, "calm");
        _swap(wethUsdc, alice, address(weth), 50e18); // ~10% move
        uint256 volatile = wethUsdc.currentFee();
        vm.assertEq(volatile, MAX_FEE, "capped at max after a big move");
        vm.warp(block.timestamp + HALF_LIFE * 4);
        uint256 calmer = wethUsdc.currentFee();
        vm.assertLt(calmer, volatile, "decays");
        vm.warp(block.timestamp + HALF_LIFE * 16);
        vm.assertEq(wethUsdc.currentFee(), BASE_FEE, "back to base");
    }

    function test_displacement_moveAndReverseCancel() public {
        uint256 out = _swap(wethUsdc, bob, address(weth), 10e18);
        vm.assertGt(wethUsdc.volatility(), 0, "a move registers");
        _swap(wethUsdc, bob, address(usdc), out * 1_004 / 1_000); // back (pays the fee on the way)
        vm.assertLe(wethUsdc.volatility(), 1, "and its reverse takes it back");
    }

    /// @notice Fuzz: with no price move, volatility after T seconds is at most its start
    /// halved floor(T / halfLife) times, however many touches fall in between.
    function testFuzz_decayIgnoresTouchFrequency(uint256 seed, uint8 touches) public {
        _swap(wethUsdc, bob, address(weth), 60e18);
        uint256 v0 = wethUsdc.volatility();
        uint256 start = block.timestamp;
        for (uint256 i; i < touches; ++i) {
            seed = uint256(keccak256(abi.encode(seed)));
            vm.warp(block.timestamp + seed % 90);
            if (seed % 3 == 0) wethUsdc.sync();
            else if (seed % 3 == 1) _addLiquidity(wethUsdc, address(weth), 1e15, address(usdc), 2e6);
            else wethUsdc.sync();
        }
        uint256 halvings = (block.timestamp - start) / HALF_LIFE;
        uint256 bound_ = halvings >= 16 ? 0 : v0 >> halvings;
        vm.assertLe(wethUsdc.volatility(), bound_ + 1, "decay slowed by touches");
    }

    function test_accumulators_giveTimeWeightedPrice() public {
        (uint128 c0Start,) = wethUsdc.currentCumulativePrices();
        vm.warp(block.timestamp + 100);
        wethUsdc.sync();
        (uint128 c0End,) = wethUsdc.currentCumulativePrices();
        (uint128 stored,) = wethUsdc.priceCumulativeLast();
        vm.assertEq(stored, c0End, "written on update");
        (uint256 r0, uint256 r1,) = wethUsdc.getReserves();
        uint256 twap = uint256(c0End - c0Start) / 100;
        vm.assertEq(twap, (r1 << 64) / r0, "TWAP of a flat price is the price");
    }

    function test_flashSwap_requiresRepayment() public {
        FlashBorrower good = new FlashBorrower(true);
        FlashBorrower bad = new FlashBorrower(false);
        LiquidityPool pool = _newPool(address(weth), 10e18, address(dai), 20_000e18);
        // token0 of this pool is whichever sorts lower; borrow token0, repay in token1.
        pool.swap(1e18, 0, address(good), hex"01");
        vm.expectRevert(LiquidityPool.InsufficientInputAmount.selector);
        pool.swap(1e18, 0, address(bad), hex"01");
    }

    /// @notice Fuzz: an exact-input quote is always executable and never one unit more.
    function testFuzz_quoteIsExact(uint256 amountIn, bool wethIn) public {
        address tokenIn = wethIn ? address(weth) : address(usdc);
        amountIn = bound(amountIn, wethIn ? 1e9 : 1e3, wethIn ? 5_000e18 : 10_000_000e6);
        (uint256 out, address tokenOut) = wethUsdc.getAmountOut(amountIn, tokenIn);
        vm.assume(out > 0);
        DevnetToken(tokenIn).mint(address(wethUsdc), amountIn);
        bool outIs0 = tokenOut < tokenIn;
        vm.expectRevert(LiquidityPool.InvariantViolated.selector);
        wethUsdc.swap(outIs0 ? out + 1 : 0, outIs0 ? 0 : out + 1, alice, "");
        wethUsdc.swap(outIs0 ? out : 0, outIs0 ? 0 : out, alice, "");
    }

    /// @notice Fuzz: getAmountIn buys at least the requested output.
    function testFuzz_amountInCoversOutput(uint256 amountOut) public {
        amountOut = bound(amountOut, 1, 1_000_000e6);
        uint256 amountIn = wethUsdc.getAmountIn(amountOut, address(weth));
        (uint256 out,) = wethUsdc.getAmountOut(amountIn, address(weth));
        vm.assertGe(out, amountOut, "enough input");
    }
}

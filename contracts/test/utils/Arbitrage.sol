// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {LiquidityPool} from "../../src/LiquidityPool.sol";
import {PriceOracle} from "../../src/PriceOracle.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";

/// @notice What arbitrageurs do between a handler's calls: bring a pool back to the oracle's
/// price (constant product, fee aside), minting the input (devnet tokens). Without it pools
/// in an invariant run wander off the oracle for good and nothing fills.
library Arbitrage {
    function align(LiquidityPool pool, PriceOracle oracle) internal {
        address t0 = pool.token0();
        address t1 = pool.token1();
        (uint256 x, uint256 y,) = pool.getReserves();
        // token1 per token0 in raw units is p0 * 10^d1 / (p1 * 10^d0): at that price x' = sqrt(k / price).
        uint256 num = oracle.getPrice(t1) * 10 ** DevnetToken(t0).decimals();
        uint256 den = oracle.getPrice(t0) * 10 ** DevnetToken(t1).decimals();
        uint256 target = Math.sqrt(Math.mulDiv(x * y, num, den));
        if (target > x) {
            uint256 amount = target - x;
            (uint256 out,) = pool.getAmountOut(amount, t0);
            if (out == 0 || out >= y) return;
            DevnetToken(t0).mint(address(pool), amount);
            pool.swap(0, out, address(0xa4b), "");
        } else if (target < x) {
            uint256 amount = Math.mulDiv(y, x - target, target);
            (uint256 out,) = pool.getAmountOut(amount, t1);
            if (out == 0 || out >= x) return;
            DevnetToken(t1).mint(address(pool), amount);
            pool.swap(out, 0, address(0xa4b), "");
        }
    }
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice What routers (OrderBook, RebalancingVault, FlashLiquidator) need from a pool.
interface ILiquidityPool {
    function token0() external view returns (address);
    function token1() external view returns (address);
    function getReserves() external view returns (uint256 reserve0, uint256 reserve1, uint32 blockTimestampLast);
    function currentFee() external view returns (uint256 feePips);
    /// @notice Output for an exact input of `tokenIn` at the current reserves and fee.
    function getAmountOut(uint256 amountIn, address tokenIn) external view returns (uint256 amountOut, address tokenOut);
    /// @notice Input of `tokenIn` needed for an exact output at the current reserves and fee.
    function getAmountIn(uint256 amountOut, address tokenIn) external view returns (uint256 amountIn);
    function swap(uint256 amount0Out, uint256 amount1Out, address to, bytes calldata data) external;
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice Receiver of a LiquidityPool flash swap: gets the output first and must
/// have paid the pool enough input (fee included) when this call returns.
interface IFlashSwapCallee {
    function onFlashSwap(address sender, uint256 amount0Out, uint256 amount1Out, bytes calldata data) external;
}

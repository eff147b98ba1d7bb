// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice Prices are USD per whole token with 18 decimals.
interface IPriceOracle {
    /// @notice The latest price; reverts if unset or stale.
    function getPrice(address asset) external view returns (uint256 price);
    /// @notice The latest price and whether it is fresh; never reverts (0, false when unset).
    function tryGetPrice(address asset) external view returns (uint256 price, bool fresh);
    /// @notice Two prices in one call; `fresh` only when both are set and fresh (never reverts).
    function tryGetPrices(address a, address b) external view returns (uint256 priceA, uint256 priceB, bool fresh);
}

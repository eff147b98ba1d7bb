// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title BuilderTip
/// @notice Pays the builder of the block it runs in. A keeper bids for inclusion with ETH
/// instead of (or on top of) priority fees by ending its bundle with a call to tip(): the
/// bundle is atomic, so the payment is made only if the work before it lands.
contract BuilderTip {
    error TipFailed();

    function tip() external payable {
        // slither-disable-next-line low-level-calls
        (bool ok,) = block.coinbase.call{value: msg.value}("");
        if (!ok) revert TipFailed();
    }
}

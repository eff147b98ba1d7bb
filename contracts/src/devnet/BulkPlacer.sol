// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";

/// @title BulkPlacer
/// @notice Benchmark and devnet helper: places one order's terms many times in one
/// transaction, so a book of 100k+ resting orders is built in seconds instead of 100k signed
/// transactions. The orders belong to this contract, which only its deployer drives.
/// @dev Talks to the book by encoded calls, not through its type: slither cannot resolve the
/// book's struct and functions from here.
contract BulkPlacer {
    using SafeERC20 for IERC20;

    /// @dev OrderBook.placeOrder(PlaceParams); BulkPlacer.t.sol checks it against the book's.
    bytes4 public constant PLACE_ORDER =
        // solhint-disable-next-line gas-small-strings
        bytes4(keccak256("placeOrder((uint16,uint8,uint96,uint96,uint32,uint8,uint128,uint32,uint32,uint16,uint16))"));

    address public immutable BOOK;
    address public immutable OPERATOR;

    error NotOperator(address caller);
    error NotPlaceOrder();
    error CancelFailed(uint256 id, bytes reason);

    constructor(address book) {
        BOOK = book;
        OPERATOR = msg.sender;
    }

    modifier onlyOperator() {
        if (msg.sender != OPERATOR) revert NotOperator(msg.sender);
        _;
    }

    /// @notice Lets the book pull `token` from this contract's balance.
    function approve(IERC20 token) external onlyOperator {
        token.forceApprove(BOOK, type(uint256).max);
    }

    /// @notice Sends the book `placeOrderCall` (ABI-encoded `placeOrder` calldata) `count`
    /// times; returns the first order id (ids are consecutive).
    function place(bytes calldata placeOrderCall, uint256 count) external onlyOperator returns (uint256 first) {
        if (bytes4(placeOrderCall[:4]) != PLACE_ORDER) revert NotPlaceOrder();
        for (uint256 i; i < count; ++i) {
            bytes memory ret = Address.functionCall(BOOK, placeOrderCall);
            if (i == 0) first = abi.decode(ret, (uint256));
        }
    }

    /// @notice Sends this contract's whole balance of `token` (refunds of cancelled orders) to `to`.
    function sweep(IERC20 token, address to) external onlyOperator {
        token.safeTransfer(to, token.balanceOf(address(this)));
    }

    /// @notice Cancels orders this contract placed (the refunds come back here).
    function cancel(uint256[] calldata ids) external onlyOperator {
        for (uint256 i; i < ids.length; ++i) {
            // solhint-disable-next-line avoid-low-level-calls
            (bool ok, bytes memory reason) = BOOK.call(abi.encodeWithSignature("cancelOrder(uint256)", ids[i]));
            if (!ok) revert CancelFailed(ids[i], reason);
        }
    }
}

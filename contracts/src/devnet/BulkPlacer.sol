// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {OrderBook} from "../OrderBook.sol";

/// @title BulkPlacer
/// @notice Benchmark and devnet helper: places one order's terms many times in one
/// transaction, so a book of 100k+ resting orders is built in seconds instead of 100k signed
/// transactions. The orders belong to this contract, which only its deployer drives.
contract BulkPlacer {
    using SafeERC20 for IERC20;

    OrderBook public immutable BOOK;
    address public immutable OPERATOR;

    error NotOperator(address caller);

    constructor(OrderBook book) {
        BOOK = book;
        OPERATOR = msg.sender;
    }

    modifier onlyOperator() {
        if (msg.sender != OPERATOR) revert NotOperator(msg.sender);
        _;
    }

    /// @notice Lets the book pull `token` from this contract's balance.
    function approve(IERC20 token) external onlyOperator {
        token.forceApprove(address(BOOK), type(uint256).max);
    }

    /// @notice Places `count` orders with terms `p`; returns the first id (ids are consecutive).
    function place(OrderBook.PlaceParams calldata p, uint256 count) external onlyOperator returns (uint256 first) {
        first = BOOK.placeOrder(p);
        for (uint256 i = 1; i < count; ++i) {
            BOOK.placeOrder(p);
        }
    }

    /// @notice Cancels orders this contract placed (the refunds come back here).
    function cancel(uint256[] calldata ids) external onlyOperator {
        for (uint256 i; i < ids.length; ++i) {
            BOOK.cancelOrder(ids[i]);
        }
    }
}

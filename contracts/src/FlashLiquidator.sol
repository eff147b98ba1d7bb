// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IFlashSwapCallee} from "./interfaces/IFlashSwapCallee.sol";
import {ILiquidityPool} from "./interfaces/ILiquidityPool.sol";
import {LendingMarket} from "./LendingMarket.sol";

/// @title FlashLiquidator
/// @notice Liquidates with no inventory: flash-borrows the debt token from a pool, repays
/// the position, and pays the pool back out of the seized collateral. The rest is profit.
contract FlashLiquidator is IFlashSwapCallee {
    using SafeERC20 for IERC20;

    /// @dev The pool this contract is waiting on, set only for the length of one liquidation.
    address private transient _expectedPool;

    event FlashLiquidation(
        address indexed market, address indexed borrower, address indexed pool, uint256 repaid, uint256 profit
    );

    error UnexpectedCallback(address caller);
    error ProfitTooLow(uint256 profit, uint256 minProfit);

    /// @notice Liquidates `borrower` on `market` funded by a flash swap on `pool`.
    /// @param repayAmount Debt to repay (the market caps it by its close factor and the collateral).
    /// @param minProfit Least collateral left after paying the pool, or the call reverts.
    /// @param profitTo Receiver of the profit.
    function liquidate(
        ILiquidityPool pool,
        LendingMarket market,
        address borrower,
        uint256 repayAmount,
        uint256 minProfit,
        address profitTo
    ) external returns (uint256 profit) {
        IERC20 collateral = market.collateralToken();
        address debt = address(market.debtToken());
        _expectedPool = address(pool);
        if (debt < address(collateral)) pool.swap(repayAmount, 0, address(this), abi.encode(market, borrower));
        else pool.swap(0, repayAmount, address(this), abi.encode(market, borrower));
        _expectedPool = address(0);
        profit = collateral.balanceOf(address(this));
        if (profit < minProfit) revert ProfitTooLow(profit, minProfit);
        collateral.safeTransfer(profitTo, profit);
        uint256 unused = IERC20(debt).balanceOf(address(this));
        if (unused != 0) IERC20(debt).safeTransfer(profitTo, unused);
        emit FlashLiquidation(address(market), borrower, address(pool), repayAmount, profit);
    }

    /// @inheritdoc IFlashSwapCallee
    function onFlashSwap(address sender, uint256 amount0Out, uint256 amount1Out, bytes calldata data) external {
        if (msg.sender != _expectedPool || sender != address(this)) revert UnexpectedCallback(msg.sender);
        (LendingMarket market, address borrower) = abi.decode(data, (LendingMarket, address));
        uint256 borrowed = amount0Out + amount1Out;
        IERC20 debt = market.debtToken();
        IERC20 collateral = market.collateralToken();
        debt.forceApprove(address(market), borrowed);
        // The market caps the repayment itself; what it took is read back from balances below.
        // slither-disable-next-line unused-return
        market.liquidate(borrower, borrowed, address(this));
        debt.forceApprove(address(market), 0);
        // The pool is paid in collateral for the whole borrow; debt tokens the market did not
        // take (close factor) go to the caller with the profit.
        collateral.safeTransfer(msg.sender, ILiquidityPool(msg.sender).getAmountIn(borrowed, address(collateral)));
    }
}

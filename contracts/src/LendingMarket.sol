// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";

/// @title LendingMarket
/// @notice One collateral token, one debt token. Lenders supply the debt token for shares;
/// borrowers post collateral and borrow against its oracle value. A position whose health
/// factor falls below 1 can be liquidated up to the close factor for a bonus; debt left
/// without collateral is written off as bad debt, borne by lenders and recorded. Collateral
/// worth less than one whole debt token cannot pay for another liquidation: a liquidation
/// that would leave that little takes it all, and the debt it cannot cover is written off.
/// @dev All parameters are immutable: no admin can change the terms of open positions.
contract LendingMarket is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    uint256 private constant BPS = 10_000;
    uint256 private constant WAD = 1e18;

    struct Params {
        uint16 collateralFactorBps; // borrow limit as a share of collateral value
        uint16 liquidationThresholdBps; // health factor 1 at this share of collateral value
        uint16 closeFactorBps; // share of the debt one liquidation may repay
        uint16 liquidationBonusBps; // extra collateral the liquidator receives
        uint64 baseRatePerSecond; // WAD
        uint64 slopePerSecond; // WAD, times utilization
    }

    struct Position {
        uint128 collateral;
        uint128 debtScaled; // debt / borrowIndex
    }

    IERC20 public immutable collateralToken;
    IERC20 public immutable debtToken;
    IPriceOracle public immutable oracle;
    uint256 public immutable collateralFactorBps;
    uint256 public immutable liquidationThresholdBps;
    uint256 public immutable closeFactorBps;
    uint256 public immutable liquidationBonusBps;
    uint256 public immutable baseRatePerSecond;
    uint256 public immutable slopePerSecond;
    uint256 private immutable _collateralUnit;
    uint256 private immutable _debtUnit;

    uint256 public borrowIndex = WAD;
    uint256 public lastAccrual;
    uint256 public totalBorrows;
    uint256 public cash;
    uint256 public totalShares;
    uint256 public badDebt;
    mapping(address lender => uint256) public sharesOf;
    mapping(address borrower => Position) private _positions;

    event Supplied(address indexed lender, uint256 amount, uint256 shares);
    event Withdrawn(address indexed lender, uint256 amount, uint256 shares);
    event CollateralDeposited(address indexed borrower, uint256 amount);
    event CollateralWithdrawn(address indexed borrower, uint256 amount);
    event Borrowed(address indexed borrower, uint256 amount);
    event Repaid(address indexed borrower, address indexed payer, uint256 amount);
    event Liquidated(
        address indexed borrower, address indexed liquidator, uint256 repaid, uint256 collateralSeized, uint256 healthBefore
    );
    event BadDebtWrittenOff(address indexed borrower, uint256 amount);

    error InvalidParams();
    error ZeroAmount();
    error InsufficientCash(uint256 requested, uint256 available);
    error InsufficientShares(uint256 requested, uint256 held);
    error InsufficientCollateral(uint256 requested, uint256 held);
    error BorrowLimitExceeded(uint256 debtValue, uint256 limit);
    error PositionHealthy(uint256 healthFactor);
    error NoDebt();

    constructor(IERC20 collateral_, IERC20 debt_, IPriceOracle oracle_, Params memory p) {
        if (
            address(collateral_) == address(debt_) || p.collateralFactorBps == 0
                || p.collateralFactorBps > p.liquidationThresholdBps || p.liquidationThresholdBps >= BPS
                || p.closeFactorBps == 0 || p.closeFactorBps > BPS
                || uint256(p.liquidationThresholdBps) * (BPS + p.liquidationBonusBps) >= BPS * BPS
        ) revert InvalidParams();
        collateralToken = collateral_;
        debtToken = debt_;
        oracle = oracle_;
        collateralFactorBps = p.collateralFactorBps;
        liquidationThresholdBps = p.liquidationThresholdBps;
        closeFactorBps = p.closeFactorBps;
        liquidationBonusBps = p.liquidationBonusBps;
        baseRatePerSecond = p.baseRatePerSecond;
        slopePerSecond = p.slopePerSecond;
        _collateralUnit = 10 ** IERC20Metadata(address(collateral_)).decimals();
        _debtUnit = 10 ** IERC20Metadata(address(debt_)).decimals();
        lastAccrual = block.timestamp;
    }

    // ------------------------------------------------------------------ lenders

    /// @notice Supplies debt tokens for lender shares.
    function supply(uint256 amount) external nonReentrant returns (uint256 shares) {
        if (amount == 0) revert ZeroAmount();
        accrue();
        uint256 assets = cash + totalBorrows;
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        shares = totalShares == 0 || assets == 0 ? amount : (amount * totalShares) / assets;
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (shares == 0) revert ZeroAmount();
        totalShares += shares;
        sharesOf[msg.sender] += shares;
        cash += amount;
        debtToken.safeTransferFrom(msg.sender, address(this), amount);
        emit Supplied(msg.sender, amount, shares);
    }

    /// @notice Redeems lender shares for debt tokens, as far as cash allows.
    function withdraw(uint256 shares) external nonReentrant returns (uint256 amount) {
        uint256 held = sharesOf[msg.sender];
        if (shares == 0) revert ZeroAmount();
        if (shares > held) revert InsufficientShares(shares, held);
        accrue();
        amount = (shares * (cash + totalBorrows)) / totalShares;
        if (amount > cash) revert InsufficientCash(amount, cash);
        sharesOf[msg.sender] = held - shares;
        totalShares -= shares;
        cash -= amount;
        debtToken.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount, shares);
    }

    // ---------------------------------------------------------------- borrowers

    /// @notice Posts collateral.
    function depositCollateral(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Position storage pos = _positions[msg.sender];
        pos.collateral = SafeCast.toUint128(pos.collateral + amount);
        collateralToken.safeTransferFrom(msg.sender, address(this), amount);
        emit CollateralDeposited(msg.sender, amount);
    }

    /// @notice Takes collateral back, if what remains still covers the debt at the collateral factor.
    function withdrawCollateral(uint256 amount) external nonReentrant {
        accrue();
        Position storage pos = _positions[msg.sender];
        if (amount > pos.collateral) revert InsufficientCollateral(amount, pos.collateral);
        pos.collateral -= uint128(amount);
        _checkBorrowLimit(msg.sender);
        collateralToken.safeTransfer(msg.sender, amount);
        emit CollateralWithdrawn(msg.sender, amount);
    }

    /// @notice Borrows debt tokens against posted collateral.
    function borrow(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        accrue();
        if (amount > cash) revert InsufficientCash(amount, cash);
        Position storage pos = _positions[msg.sender];
        pos.debtScaled = SafeCast.toUint128(pos.debtScaled + Math.mulDiv(amount, WAD, borrowIndex, Math.Rounding.Ceil));
        totalBorrows += amount;
        cash -= amount;
        _checkBorrowLimit(msg.sender);
        debtToken.safeTransfer(msg.sender, amount);
        emit Borrowed(msg.sender, amount);
    }

    /// @notice Repays up to `amount` of `borrower`'s debt.
    /// @return paid What was actually taken (at most the debt).
    function repay(address borrower, uint256 amount) external nonReentrant returns (uint256 paid) {
        accrue();
        uint256 debt = debtOf(borrower);
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (debt == 0) revert NoDebt();
        paid = amount > debt ? debt : amount;
        _reduceDebt(borrower, paid, debt);
        debtToken.safeTransferFrom(msg.sender, address(this), paid);
        emit Repaid(borrower, msg.sender, paid);
    }

    // -------------------------------------------------------------- liquidation

    /// @notice Repays part of an unhealthy position's debt for its collateral plus the bonus.
    /// @param repayAmount Most the caller will repay; capped by the close factor and the collateral.
    /// @param receiver Receiver of the seized collateral.
    /// @return repaid Debt repaid by the caller.
    /// @return seized Collateral sent to `receiver`.
    function liquidate(address borrower, uint256 repayAmount, address receiver)
        external
        nonReentrant
        returns (uint256 repaid, uint256 seized)
    {
        accrue();
        uint256 health = healthFactor(borrower);
        if (health >= WAD) revert PositionHealthy(health);
        uint256 debt = debtOf(borrower);
        Position storage pos = _positions[borrower];
        uint256 collateral = pos.collateral;

        // A debt too small for the close factor to leave anything may be repaid whole.
        uint256 cap = (debt * closeFactorBps) / BPS;
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        repaid = Math.min(repayAmount, cap == 0 ? debt : cap);
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (repaid == 0) revert ZeroAmount();
        (uint256 pColl, uint256 pDebt) = _prices();
        seized = _collateralFor(repaid, pColl, pDebt);
        if (seized >= collateral) {
            // Underwater: everything goes, and the repayment shrinks to what it buys (possibly
            // nothing, for dust: the write-off below still happens).
            seized = collateral;
            repaid = Math.min(
                repaid,
                Math.mulDiv(
                    Math.mulDiv(collateral, pColl * _debtUnit, pDebt * _collateralUnit), BPS, BPS + liquidationBonusBps
                )
            );
        } else if (Math.mulDiv(collateral - seized, pColl * _debtUnit, pDebt * _collateralUnit) < _debtUnit) {
            // What would be left is dust: it goes with this liquidation.
            seized = collateral;
        }
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (seized == 0) revert ZeroAmount();
        pos.collateral = uint128(collateral - seized);
        if (repaid != 0) _reduceDebt(borrower, repaid, debt);
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (collateral == seized) _writeOff(borrower);
        debtToken.safeTransferFrom(msg.sender, address(this), repaid);
        collateralToken.safeTransfer(receiver, seized);
        emit Liquidated(borrower, msg.sender, repaid, seized, health);
    }

    // -------------------------------------------------------------------- views

    /// @notice Accrues interest to now (anyone may call; every state change does).
    function accrue() public {
        uint256 elapsed = block.timestamp - lastAccrual;
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (elapsed == 0) return;
        lastAccrual = block.timestamp;
        uint256 borrows = totalBorrows;
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (borrows == 0) return;
        uint256 factor = _rate(borrows) * elapsed;
        borrowIndex += Math.mulDiv(borrowIndex, factor, WAD);
        totalBorrows = borrows + Math.mulDiv(borrows, factor, WAD);
    }

    /// @notice Current borrow rate per second (WAD) from utilization.
    function borrowRatePerSecond() external view returns (uint256) {
        return _rate(totalBorrows);
    }

    /// @notice A borrower's debt at the stored index.
    function debtOf(address borrower) public view returns (uint256) {
        return Math.mulDiv(_positions[borrower].debtScaled, borrowIndex, WAD, Math.Rounding.Ceil);
    }

    /// @notice A borrower's collateral and debt.
    function positionOf(address borrower) external view returns (uint256 collateral, uint256 debt) {
        return (_positions[borrower].collateral, debtOf(borrower));
    }

    /// @notice Liquidation-threshold collateral value over debt value (WAD); max when there is no debt.
    function healthFactor(address borrower) public view returns (uint256) {
        uint256 debt = debtOf(borrower);
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (debt == 0) return type(uint256).max;
        (uint256 pColl, uint256 pDebt) = _prices();
        uint256 collValue = Math.mulDiv(_positions[borrower].collateral, pColl, _collateralUnit);
        uint256 debtValue = Math.mulDiv(debt, pDebt, _debtUnit);
        return Math.mulDiv(collValue * liquidationThresholdBps / BPS, WAD, debtValue);
    }

    // ----------------------------------------------------------------- internal

    function _rate(uint256 borrows) private view returns (uint256) {
        uint256 assets = cash + borrows;
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        uint256 utilization = assets == 0 ? 0 : Math.mulDiv(borrows, WAD, assets);
        return baseRatePerSecond + Math.mulDiv(slopePerSecond, utilization, WAD);
    }

    function _prices() private view returns (uint256 pColl, uint256 pDebt) {
        pColl = oracle.getPrice(address(collateralToken));
        pDebt = oracle.getPrice(address(debtToken));
    }

    function _collateralFor(uint256 repaid, uint256 pColl, uint256 pDebt) private view returns (uint256) {
        uint256 base = Math.mulDiv(repaid, pDebt * _collateralUnit, pColl * _debtUnit);
        return Math.mulDiv(base, BPS + liquidationBonusBps, BPS);
    }

    /// @dev The debt of a position left without collateral is bad debt: lenders bear it.
    function _writeOff(address borrower) private {
        uint256 left = debtOf(borrower);
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (left == 0) return;
        _positions[borrower].debtScaled = 0;
        totalBorrows = totalBorrows > left ? totalBorrows - left : 0;
        badDebt += left;
        emit BadDebtWrittenOff(borrower, left);
    }

    function _reduceDebt(address borrower, uint256 amount, uint256 debt) private {
        Position storage pos = _positions[borrower];
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (amount == debt) {
            pos.debtScaled = 0;
        } else {
            uint256 scaled = Math.mulDiv(amount, WAD, borrowIndex);
            pos.debtScaled = scaled >= pos.debtScaled ? 0 : pos.debtScaled - uint128(scaled);
        }
        totalBorrows = totalBorrows > amount ? totalBorrows - amount : 0;
        cash += amount;
    }

    function _checkBorrowLimit(address borrower) private view {
        uint256 debt = debtOf(borrower);
        // Strict equality on own accounting (not a balance): no transfer can move it.
        // slither-disable-next-line incorrect-equality
        if (debt == 0) return;
        (uint256 pColl, uint256 pDebt) = _prices();
        uint256 limit = Math.mulDiv(_positions[borrower].collateral, pColl, _collateralUnit) * collateralFactorBps / BPS;
        uint256 debtValue = Math.mulDiv(debt, pDebt, _debtUnit);
        if (debtValue > limit) revert BorrowLimitExceeded(debtValue, limit);
    }
}

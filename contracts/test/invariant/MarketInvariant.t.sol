// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "../utils/Test.sol";
import {MarketFixture} from "../LendingMarket.t.sol";
import {Fixture} from "../utils/Fixture.sol";
import {LiquidityPool} from "../../src/LiquidityPool.sol";
import {LendingMarket} from "../../src/LendingMarket.sol";
import {PriceOracle} from "../../src/PriceOracle.sol";
import {DevnetToken} from "../../src/devnet/DevnetToken.sol";

/// @notice Random swaps, adds and removes of liquidity; records any drop of k per share squared.
contract PoolHandler is Test {
    LiquidityPool internal pool;
    DevnetToken internal t0;
    DevnetToken internal t1;
    uint256 public kDecreases;

    constructor(LiquidityPool pool_) {
        pool = pool_;
        t0 = DevnetToken(pool.token0());
        t1 = DevnetToken(pool.token1());
    }

    /// @dev sqrt(k) / supply: fees make it grow, nothing may shrink it.
    function _rootKPerShare() internal view returns (uint256) {
        (uint256 r0, uint256 r1,) = pool.getReserves();
        return (_sqrt(r0 * r1) * 1e18) / pool.totalSupply();
    }

    function swap(uint256 amount, bool zeroForOne, uint256 pause) external {
        vm.warp(block.timestamp + bound(pause, 0, 120));
        (uint256 r0, uint256 r1,) = pool.getReserves();
        DevnetToken tokenIn = zeroForOne ? t0 : t1;
        amount = bound(amount, 1e3, (zeroForOne ? r0 : r1) / 2);
        uint256 before = _rootKPerShare();
        (uint256 out,) = pool.getAmountOut(amount, address(tokenIn));
        if (out == 0) return;
        tokenIn.mint(address(pool), amount);
        pool.swap(zeroForOne ? 0 : out, zeroForOne ? out : 0, address(0xbeef), "");
        (uint256 n0, uint256 n1,) = pool.getReserves();
        if (n0 * n1 < r0 * r1 || _rootKPerShare() < before) ++kDecreases;
    }

    function addLiquidity(uint256 share) external {
        (uint256 r0, uint256 r1,) = pool.getReserves();
        share = bound(share, 1, 1_000);
        uint256 before = _rootKPerShare();
        t0.mint(address(pool), (r0 * share) / 1_000 + 1);
        t1.mint(address(pool), (r1 * share) / 1_000 + 1);
        pool.mint(address(this));
        if (_rootKPerShare() + _oneUnit() < before) ++kDecreases;
    }

    /// @dev One unit of sqrt(k), per share: the rounding of a mint or burn (large when the
    /// supply is small).
    function _oneUnit() internal view returns (uint256) {
        return 1e18 / pool.totalSupply() + 1;
    }

    function removeLiquidity(uint256 share) external {
        uint256 held = pool.balanceOf(address(this));
        if (held == 0) return;
        uint256 before = _rootKPerShare();
        share = bound(share, 1, held);
        (uint256 r0, uint256 r1,) = pool.getReserves();
        uint256 supply = pool.totalSupply();
        if (share * r0 / supply == 0 || share * r1 / supply == 0) return; // the pool refuses dust burns
        pool.transfer(address(pool), share);
        pool.burn(address(this));
        if (_rootKPerShare() + _oneUnit() < before) ++kDecreases;
    }

    function _sqrt(uint256 x) internal pure returns (uint256 y) {
        if (x == 0) return 0;
        uint256 z = (x + 1) / 2;
        y = x;
        while (z < y) {
            (y, z) = (z, (x / z + z) / 2);
        }
    }
}

contract PoolInvariantTest is Fixture {
    PoolHandler internal handler;

    function setUp() public override {
        super.setUp();
        handler = new PoolHandler(wethUsdc);
        targetContract(address(handler));
    }

    /// @notice The pool's k (per LP share) never decreases.
    function invariant_kNeverDecreases() public view {
        vm.assertEq(handler.kDecreases(), 0, "k decreased");
    }
}

/// @notice Lenders supply and withdraw; borrowers open, repay and withdraw collateral; the
/// price walks (deep enough for bad debt) and time passes; liquidators repay any amount,
/// down to dust. Records any liquidation of a healthy position.
contract LendingHandler is Test {
    LendingMarket internal market;
    PriceOracle internal oracle;
    DevnetToken internal weth;
    DevnetToken internal usdc;
    address internal updater;
    address[] public borrowers;
    address[2] internal lenders = [address(0x1e0001), address(0x1e0002)];
    uint256 public healthyLiquidated;
    uint256 public liquidations;
    uint256 public badDebtDecreased;
    uint256 internal lastBadDebt;

    constructor(LendingMarket m, PriceOracle o, DevnetToken w, DevnetToken u, address up) {
        (market, oracle, weth, usdc, updater) = (m, o, w, u, up);
        for (uint256 i; i < 4; ++i) borrowers.push(address(uint160(0xb0000 + i)));
        usdc.mint(address(this), 1e30);
        usdc.approve(address(market), type(uint256).max);
        for (uint256 i; i < 2; ++i) {
            usdc.mint(lenders[i], 1e30);
            vm.prank(lenders[i]);
            usdc.approve(address(market), type(uint256).max);
        }
    }

    function _afterCall() private {
        if (market.badDebt() < lastBadDebt) ++badDebtDecreased;
        lastBadDebt = market.badDebt();
    }

    function open(uint256 who, uint256 collateral, uint256 ltvBps) external {
        address b = borrowers[who % borrowers.length];
        collateral = bound(collateral, 1e17, 100e18);
        weth.mint(b, collateral);
        vm.startPrank(b);
        weth.approve(address(market), collateral);
        market.depositCollateral(collateral);
        market.accrue();
        uint256 price = oracle.getPrice(address(weth));
        (uint256 held, uint256 debt) = market.positionOf(b);
        uint256 room = (held * price / 1e30) * bound(ltvBps, 1, 7_400) / 10_000;
        if (room > debt + 1 && room - debt - 1 <= market.cash()) market.borrow(room - debt - 1);
        vm.stopPrank();
        _afterCall();
    }

    function repay(uint256 who, uint256 amount) external {
        address b = borrowers[who % borrowers.length];
        market.accrue();
        if (market.debtOf(b) == 0) return;
        market.repay(b, bound(amount, 1, market.debtOf(b)));
        _afterCall();
    }

    function withdrawCollateral(uint256 who, uint256 amount) external {
        address b = borrowers[who % borrowers.length];
        (uint256 held,) = market.positionOf(b);
        if (held == 0) return;
        vm.prank(b);
        try market.withdrawCollateral(bound(amount, 1, held)) {} catch {} // refused past the limit
        _afterCall();
    }

    function supply(uint256 who, uint256 amount) external {
        vm.prank(lenders[who % 2]);
        market.supply(bound(amount, 1e6, 1_000_000e6));
        _afterCall();
    }

    function withdraw(uint256 who, uint256 shares) external {
        address l = lenders[who % 2];
        uint256 held = market.sharesOf(l);
        if (held == 0) return;
        vm.prank(l);
        try market.withdraw(bound(shares, 1, held)) {} catch {} // refused beyond the cash
        _afterCall();
    }

    function movePrice(uint256 seed) external {
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + 1);
        uint256 current = oracle.getPrice(address(weth));
        // A walk kept above 100 USD: deep runs would otherwise drift to zero.
        uint256 lo = current * 82 / 100 > 100e18 ? current * 82 / 100 : 100e18;
        uint256 p = bound(seed, lo, lo > current * 115 / 100 ? lo : current * 115 / 100);
        vm.prank(updater);
        oracle.updatePrice(address(weth), p);
        _afterCall();
    }

    function passTime(uint256 seed) external {
        vm.roll(block.number + 1);
        vm.warp(block.timestamp + bound(seed, 1, 1 days));
        (, uint256 p,) = oracle.latestRound(address(weth));
        vm.startPrank(updater);
        oracle.updatePrice(address(weth), p);
        oracle.updatePrice(address(usdc), 1e18);
        vm.stopPrank();
        _afterCall();
    }

    function liquidate(uint256 who, uint256 amount) external {
        address b = borrowers[who % borrowers.length];
        market.accrue();
        uint256 health = market.healthFactor(b);
        // Any size, down to a few units: a liquidator who leaves dust must not strand debt.
        uint256 repay_ = amount % 3 == 0 ? bound(amount, 1, 1_000) : bound(amount, 1, 1e13);
        try market.liquidate(b, repay_, address(this)) {
            ++liquidations;
            if (health >= 1e18) ++healthyLiquidated;
        } catch {}
        _afterCall();
    }

    function borrowerCount() external view returns (uint256) {
        return borrowers.length;
    }
}

contract LendingInvariantTest is MarketFixture {
    LendingHandler internal handler;

    function setUp() public override {
        super.setUp();
        handler = new LendingHandler(market, oracle, weth, usdc, address(0x0b0b));
        vm.prank(admin);
        oracle.setUpdater(address(0x0b0b), true);
        targetContract(address(handler));
    }

    /// @notice A healthy position is never liquidated.
    function invariant_noHealthyLiquidation() public view {
        vm.assertEq(handler.healthyLiquidated(), 0, "healthy position liquidated");
    }

    /// @notice Debt-token accounting matches the tokens held.
    function invariant_cashMatchesBalance() public view {
        vm.assertEq(usdc.balanceOf(address(market)), market.cash(), "cash == balance");
    }

    /// @notice Lenders are never owed more than borrowers owe plus the cash (rounding aside),
    /// no position keeps debt without collateral (it is written off), and bad debt only grows.
    function invariant_lendersAccounting() public view {
        uint256 owed;
        uint256 n = handler.borrowerCount();
        for (uint256 i; i < n; ++i) {
            (uint256 collateral, uint256 debt) = market.positionOf(handler.borrowers(i));
            owed += debt;
            if (collateral == 0) vm.assertEq(debt, 0, "debt left without collateral");
        }
        vm.assertLe(market.totalBorrows(), owed + n, "lenders count on more than borrowers owe");
        vm.assertEq(handler.badDebtDecreased(), 0, "bad debt shrank");
    }
}

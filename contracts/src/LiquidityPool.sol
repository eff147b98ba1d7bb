// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {IFlashSwapCallee} from "./interfaces/IFlashSwapCallee.sol";
import {ILiquidityPool} from "./interfaces/ILiquidityPool.sol";

/// @title LiquidityPool
/// @notice Constant-product AMM (x * y = k) with LP shares, a volatility-driven
/// dynamic fee, wrapping price accumulators for TWAP reads, and V2-style flash swaps.
/// @dev Storage is packed so a swap touches two slots (V2 touches four and an SSTORE lock):
///   slot A: reserve0 (104) | reserve1 (104) | blockTimestampLast (32) | displacement (int16)
/// Volatility is the net displacement of the price from a lagging reference, in basis
/// points: each price move adds to it with its sign (so flow back and forth cancels instead
/// of adding up), and it halves at every multiple of the half-life on the clock (so how
/// often the pool is touched cannot slow or speed the decay: the halvings between any two
/// times are the same whatever happened in between).
///   slot B: price0Cumulative (128) | price1Cumulative (128)
/// Accumulators hold UQ64.64 prices times seconds and wrap by design, like Uniswap V2's:
/// readers take differences, which stay exact while avg price * window < 2^64.
contract LiquidityPool is ILiquidityPool, ERC20, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    uint256 public constant MINIMUM_LIQUIDITY = 1000;
    /// @notice Fees are in pips: 1_000_000 = 100%.
    uint256 public constant FEE_DENOMINATOR = 1_000_000;
    uint256 private constant MAX_RESERVE = type(uint104).max;
    int256 private constant MAX_DISPLACEMENT = type(int16).max;
    address private constant DEAD = 0x000000000000000000000000000000000000dEaD;

    address public immutable token0;
    address public immutable token1;
    /// @notice Fee when the market is calm.
    uint24 public immutable baseFee;
    /// @notice Upper bound of the dynamic fee.
    uint24 public immutable maxFee;
    /// @notice Fee added per basis point of recent volatility.
    uint24 public immutable feePerVolatilityBps;
    /// @notice Recent volatility halves every this many seconds.
    uint32 public immutable volatilityHalfLife;

    uint256 private _slotA;
    uint256 private _slotB;

    event Mint(address indexed sender, address indexed to, uint256 amount0, uint256 amount1, uint256 liquidity);
    event Burn(address indexed sender, address indexed to, uint256 amount0, uint256 amount1, uint256 liquidity);
    /// @dev Carries the new reserves, so indexers need no separate Sync event per swap.
    event Swap(
        address indexed sender,
        address indexed to,
        uint256 amount0In,
        uint256 amount1In,
        uint256 amount0Out,
        uint256 amount1Out,
        uint256 reserve0,
        uint256 reserve1,
        uint256 feePips
    );
    event Sync(uint256 reserve0, uint256 reserve1);

    error InvalidTokens();
    error InvalidFeeConfig();
    error InsufficientLiquidityMinted();
    error InsufficientLiquidityBurned();
    error InsufficientOutputAmount();
    error InsufficientInputAmount();
    error InsufficientLiquidity();
    error InvalidRecipient();
    error InvariantViolated();
    error ReserveOverflow();
    error NotPoolToken(address token);

    /// @param token0_ The lower-addressed token.
    /// @param token1_ The higher-addressed token.
    /// @param baseFee_ Calm-market fee in pips (3000 = 0.30%).
    /// @param maxFee_ Cap of the dynamic fee in pips.
    /// @param feePerVolatilityBps_ Pips added per basis point of decayed recent volatility.
    /// @param volatilityHalfLife_ Seconds for recent volatility to halve.
    constructor(
        address token0_,
        address token1_,
        uint24 baseFee_,
        uint24 maxFee_,
        uint24 feePerVolatilityBps_,
        uint32 volatilityHalfLife_
    ) ERC20("Keepers LP", "KLP") {
        if (token0_ == address(0) || token0_ >= token1_) revert InvalidTokens();
        if (baseFee_ > maxFee_ || maxFee_ >= FEE_DENOMINATOR / 10 || volatilityHalfLife_ == 0) {
            revert InvalidFeeConfig();
        }
        token0 = token0_;
        token1 = token1_;
        baseFee = baseFee_;
        maxFee = maxFee_;
        feePerVolatilityBps = feePerVolatilityBps_;
        volatilityHalfLife = volatilityHalfLife_;
    }

    // ------------------------------------------------------------------ views

    /// @notice Current reserves and the timestamp of their last update.
    function getReserves() public view returns (uint256 reserve0, uint256 reserve1, uint32 blockTimestampLast) {
        uint256 a = _slotA;
        reserve0 = uint104(a);
        reserve1 = uint104(a >> 104);
        blockTimestampLast = uint32(a >> 208);
    }

    /// @notice Recent volatility in basis points (the net displacement's size), decayed to now.
    function volatility() public view returns (uint256) {
        return _abs(_displacement(_slotA));
    }

    /// @notice The fee a swap pays now, in pips.
    function currentFee() public view returns (uint256 feePips) {
        return _fee(volatility());
    }

    /// @notice Accumulators as last written (UQ64.64 price * seconds, wrapping).
    function priceCumulativeLast() external view returns (uint128 price0Cumulative, uint128 price1Cumulative) {
        uint256 b = _slotB;
        return (uint128(b), uint128(b >> 128));
    }

    /// @notice Accumulators extrapolated to this block, for TWAP reads without a write.
    function currentCumulativePrices() external view returns (uint128 price0Cumulative, uint128 price1Cumulative) {
        uint256 b = _slotB;
        (uint256 r0, uint256 r1, uint32 last) = getReserves();
        price0Cumulative = uint128(b);
        price1Cumulative = uint128(b >> 128);
        if (r0 != 0 && r1 != 0) {
            unchecked {
                uint256 elapsed = uint32(block.timestamp) - last;
                // UQ64.64 price first, then times seconds, as Uniswap V2's accumulators.
                // slither-disable-next-line divide-before-multiply
                price0Cumulative += uint128(((r1 << 64) / r0) * elapsed);
                // slither-disable-next-line divide-before-multiply
                price1Cumulative += uint128(((r0 << 64) / r1) * elapsed);
            }
        }
    }

    /// @inheritdoc ILiquidityPool
    function getAmountOut(uint256 amountIn, address tokenIn) public view returns (uint256 amountOut, address tokenOut) {
        (uint256 r0, uint256 r1,) = getReserves();
        (uint256 reserveIn, uint256 reserveOut) = _orient(tokenIn, r0, r1);
        tokenOut = tokenIn == token0 ? token1 : token0;
        uint256 inAfterFee = amountIn * (FEE_DENOMINATOR - currentFee());
        amountOut = (inAfterFee * reserveOut) / (reserveIn * FEE_DENOMINATOR + inAfterFee);
    }

    /// @inheritdoc ILiquidityPool
    function getAmountIn(uint256 amountOut, address tokenIn) external view returns (uint256 amountIn) {
        (uint256 r0, uint256 r1,) = getReserves();
        (uint256 reserveIn, uint256 reserveOut) = _orient(tokenIn, r0, r1);
        if (amountOut >= reserveOut) revert InsufficientLiquidity();
        amountIn = (reserveIn * amountOut * FEE_DENOMINATOR) / ((reserveOut - amountOut) * (FEE_DENOMINATOR - currentFee())) + 1;
    }

    // -------------------------------------------------------------- mutations

    /// @notice Mints LP shares for tokens already sent to the pool.
    /// @param to Receiver of the shares.
    /// @return liquidity Shares minted.
    function mint(address to) external nonReentrant returns (uint256 liquidity) {
        (uint256 r0, uint256 r1,) = getReserves();
        uint256 balance0 = IERC20(token0).balanceOf(address(this));
        uint256 balance1 = IERC20(token1).balanceOf(address(this));
        uint256 amount0 = balance0 - r0;
        uint256 amount1 = balance1 - r1;
        uint256 supply = totalSupply();
        // Strict equality on share supply (own accounting; MINIMUM_LIQUIDITY locked at first mint).
        // slither-disable-next-line incorrect-equality
        if (supply == 0) {
            liquidity = Math.sqrt(amount0 * amount1) - MINIMUM_LIQUIDITY;
            // Locked forever so the share price can never be reset to a manipulable value.
            _mint(DEAD, MINIMUM_LIQUIDITY);
        } else {
            liquidity = Math.min((amount0 * supply) / r0, (amount1 * supply) / r1);
        }
        // Strict equality on shares minted (V2's check): a donation only adds to them.
        // slither-disable-next-line incorrect-equality
        if (liquidity == 0) revert InsufficientLiquidityMinted();
        _mint(to, liquidity);
        _update(balance0, balance1, r0, r1, _displacement(_slotA));
        emit Mint(msg.sender, to, amount0, amount1, liquidity);
        emit Sync(balance0, balance1);
    }

    /// @notice Burns LP shares already sent to the pool and pays out both tokens pro rata.
    /// @param to Receiver of the tokens.
    function burn(address to) external nonReentrant returns (uint256 amount0, uint256 amount1) {
        (uint256 r0, uint256 r1,) = getReserves();
        uint256 balance0 = IERC20(token0).balanceOf(address(this));
        uint256 balance1 = IERC20(token1).balanceOf(address(this));
        uint256 liquidity = balanceOf(address(this));
        uint256 supply = totalSupply();
        amount0 = (liquidity * balance0) / supply;
        amount1 = (liquidity * balance1) / supply;
        // Strict equality on the payout (V2's check): a donation only adds to it.
        // slither-disable-next-line incorrect-equality
        if (amount0 == 0 || amount1 == 0) revert InsufficientLiquidityBurned();
        _burn(address(this), liquidity);
        IERC20(token0).safeTransfer(to, amount0);
        IERC20(token1).safeTransfer(to, amount1);
        balance0 = IERC20(token0).balanceOf(address(this));
        balance1 = IERC20(token1).balanceOf(address(this));
        _update(balance0, balance1, r0, r1, _displacement(_slotA));
        emit Burn(msg.sender, to, amount0, amount1, liquidity);
        emit Sync(balance0, balance1);
    }

    /// @notice Swaps for input already sent to the pool (or paid inside the flash callback).
    /// @param amount0Out Token0 to send to `to`.
    /// @param amount1Out Token1 to send to `to`.
    /// @param to Receiver; when `data` is non-empty it is called back before the invariant check.
    /// @param data Passed to `IFlashSwapCallee.onFlashSwap`; empty for a plain swap.
    function swap(uint256 amount0Out, uint256 amount1Out, address to, bytes calldata data) external nonReentrant {
        if (amount0Out == 0 && amount1Out == 0) revert InsufficientOutputAmount();
        uint256 a = _slotA;
        if (amount0Out >= uint104(a) || amount1Out >= uint104(a >> 104)) revert InsufficientLiquidity();
        if (to == token0 || to == token1) revert InvalidRecipient();

        if (amount0Out != 0) IERC20(token0).safeTransfer(to, amount0Out);
        if (amount1Out != 0) IERC20(token1).safeTransfer(to, amount1Out);
        if (data.length != 0) IFlashSwapCallee(to).onFlashSwap(msg.sender, amount0Out, amount1Out, data);
        // A flash swap settles after its callback by design (V2's pattern); every function that
        // reads or writes the reserves holds the same reentrancy lock, so the callback cannot.
        // slither-disable-next-line reentrancy-no-eth
        _settleSwap(a, amount0Out, amount1Out, to);
    }

    /// @dev Second half of a swap, split out to keep the stack shallow: measures the input,
    /// checks k net of the fee, writes the state and emits.
    function _settleSwap(uint256 a, uint256 amount0Out, uint256 amount1Out, address to) private {
        uint256 r0 = uint104(a);
        uint256 r1 = uint104(a >> 104);
        uint256 balance0 = IERC20(token0).balanceOf(address(this));
        uint256 balance1 = IERC20(token1).balanceOf(address(this));
        uint256 amount0In;
        uint256 amount1In;
        unchecked {
            // amountOut < reserve was checked by swap, so the subtractions cannot wrap.
            amount0In = balance0 > r0 - amount0Out ? balance0 - (r0 - amount0Out) : 0;
            amount1In = balance1 > r1 - amount1Out ? balance1 - (r1 - amount1Out) : 0;
        }
        // Strict equality on the input (V2's check): a donation only adds to it.
        // slither-disable-next-line incorrect-equality
        if (amount0In == 0 && amount1In == 0) revert InsufficientInputAmount();

        // The fee is set by volatility before this swap, so quotes made in advance hold.
        int256 x = _displacement(a);
        uint256 fee = _fee(_abs(x));
        {
            uint256 adjusted0 = balance0 * FEE_DENOMINATOR - amount0In * fee;
            uint256 adjusted1 = balance1 * FEE_DENOMINATOR - amount1In * fee;
            if (adjusted0 * adjusted1 < r0 * r1 * (FEE_DENOMINATOR * FEE_DENOMINATOR)) revert InvariantViolated();
        }
        _update(balance0, balance1, r0, r1, x);
        emit Swap(msg.sender, to, amount0In, amount1In, amount0Out, amount1Out, balance0, balance1, fee);
    }

    /// @notice Sets the reserves to the balances (recovers from a token sent without a swap).
    function sync() external nonReentrant {
        uint256 balance0 = IERC20(token0).balanceOf(address(this));
        uint256 balance1 = IERC20(token1).balanceOf(address(this));
        (uint256 r0, uint256 r1,) = getReserves();
        _update(balance0, balance1, r0, r1, _displacement(_slotA));
        emit Sync(balance0, balance1);
    }

    // --------------------------------------------------------------- internal

    function _orient(address tokenIn, uint256 r0, uint256 r1) private view returns (uint256, uint256) {
        if (tokenIn == token0) return (r0, r1);
        if (tokenIn == token1) return (r1, r0);
        revert NotPoolToken(tokenIn);
    }

    function _fee(uint256 vol) private view returns (uint256) {
        uint256 fee = baseFee + vol * feePerVolatilityBps;
        return fee > maxFee ? maxFee : fee;
    }

    /// @dev The stored displacement decayed to now: halved once per multiple of the half-life
    /// passed on the clock since the last write (toward zero, keeping its sign).
    function _displacement(uint256 a) private view returns (int256) {
        int256 x = int16(uint16(a >> 240));
        uint256 last = uint32(a >> 208);
        uint256 nowTs = uint32(block.timestamp);
        uint256 h = volatilityHalfLife;
        // A clock that wrapped (2106) counts as long ago.
        uint256 halvings = nowTs >= last ? nowTs / h - last / h : 16;
        if (halvings >= 16) return 0;
        return x >= 0 ? int256(uint256(x) >> halvings) : -int256(uint256(-x) >> halvings);
    }

    function _abs(int256 x) private pure returns (uint256) {
        return uint256(x >= 0 ? x : -x);
    }

    /// @dev Signed move of p = r1 / r0 in basis points, measured against the midpoint of the
    /// two prices, so a move and its exact reverse are equal and opposite (they cancel).
    function _moveBps(uint256 r0, uint256 r1, uint256 b0, uint256 b1) private pure returns (int256) {
        uint256 before = r1 * b0;
        uint256 afterMove = b1 * r0;
        uint256 sum = before + afterMove;
        // Strict equality on reserves: zero only before the first mint (no price yet).
        // slither-disable-next-line incorrect-equality
        if (before == 0 || afterMove == 0) return 0;
        uint256 diff = afterMove > before ? afterMove - before : before - afterMove;
        // diff < 2^208 and sum >= diff, so the quotient is at most 20_000.
        int256 bps = int256((diff * 20_000) / sum);
        return afterMove > before ? bps : -bps;
    }

    /// @dev Writes the new reserves, advances the accumulators, and adds this update's price
    /// move to the (already decayed) displacement `x`.
    function _update(uint256 balance0, uint256 balance1, uint256 r0, uint256 r1, int256 x) private {
        if (balance0 > MAX_RESERVE || balance1 > MAX_RESERVE) revert ReserveOverflow();
        uint32 last = uint32(_slotA >> 208);
        uint32 nowTs = uint32(block.timestamp);
        unchecked {
            uint32 elapsed = nowTs - last; // wraps in 2106, as V2's does
            if (elapsed != 0 && r0 != 0 && r1 != 0) {
                uint256 b = _slotB;
                // UQ64.64 price first, then times seconds, as Uniswap V2's accumulators.
                // slither-disable-next-line divide-before-multiply
                uint128 c0 = uint128(b) + uint128(((r1 << 64) / r0) * elapsed);
                // slither-disable-next-line divide-before-multiply
                uint128 c1 = uint128(b >> 128) + uint128(((r0 << 64) / r1) * elapsed);
                _slotB = uint256(c0) | (uint256(c1) << 128);
            }
        }
        x += _moveBps(r0, r1, balance0, balance1);
        if (x > MAX_DISPLACEMENT) x = MAX_DISPLACEMENT;
        else if (x < -MAX_DISPLACEMENT) x = -MAX_DISPLACEMENT;
        _slotA = balance0 | (balance1 << 104) | (uint256(nowTs) << 208) | (uint256(uint16(int16(x))) << 240);
    }
}

"""Off-chain mirror of LiquidityPool's quote math, so strategies can price routes without an
eth_call per candidate. Must match the contract to the unit; tests check it against anvil."""

from __future__ import annotations

FEE_DENOMINATOR = 1_000_000


def dynamic_fee(base_fee: int, max_fee: int, fee_per_vol_bps: int, volatility_bps: int) -> int:
    """The fee in pips for a decayed volatility (LiquidityPool._fee)."""
    return min(max_fee, base_fee + volatility_bps * fee_per_vol_bps)


def decayed_volatility(volatility_bps: int, elapsed: int, half_life: int) -> int:
    """Volatility halved once per elapsed half-life (LiquidityPool._decayed)."""
    halvings = elapsed // half_life
    return 0 if halvings >= 16 else volatility_bps >> halvings


def amount_out(amount_in: int, reserve_in: int, reserve_out: int, fee_pips: int) -> int:
    """Exact-input output (LiquidityPool.getAmountOut)."""
    in_after_fee = amount_in * (FEE_DENOMINATOR - fee_pips)
    return (in_after_fee * reserve_out) // (reserve_in * FEE_DENOMINATOR + in_after_fee)


def amount_in(amount_out_: int, reserve_in: int, reserve_out: int, fee_pips: int) -> int:
    """Input needed for an exact output (LiquidityPool.getAmountIn)."""
    if amount_out_ >= reserve_out:
        raise ValueError("output exceeds the reserve")
    num = reserve_in * amount_out_ * FEE_DENOMINATOR
    return num // ((reserve_out - amount_out_) * (FEE_DENOMINATOR - fee_pips)) + 1

from hypothesis import given
from hypothesis import strategies as st

from keepers.chain.pool_math import amount_in, amount_out, decayed_volatility, dynamic_fee

reserves = st.integers(min_value=10**6, max_value=2**100)
fees = st.integers(min_value=0, max_value=99_999)


@given(reserves, reserves, st.integers(min_value=1, max_value=2**96), fees)
def test_output_never_reaches_the_reserve(r_in, r_out, a_in, fee):
    assert amount_out(a_in, r_in, r_out, fee) < r_out


@given(reserves, reserves, st.integers(min_value=1, max_value=2**90), fees)
def test_amount_in_buys_at_least_the_output(r_in, r_out, want, fee):
    want = want % (r_out - 1) + 1
    needed = amount_in(want, r_in, r_out, fee)
    assert amount_out(needed, r_in, r_out, fee) >= want


@given(st.integers(0, 65_535), st.integers(0, 10**6), st.integers(1, 3600))
def test_volatility_only_decays(vol, elapsed, half_life):
    assert decayed_volatility(vol, elapsed, half_life) <= vol


@given(st.integers(0, 5000), st.integers(0, 100_000), st.integers(0, 1000), st.integers(0, 65_535))
def test_fee_is_capped(base, cap, slope, vol):
    assert dynamic_fee(base, cap, slope, vol) <= cap

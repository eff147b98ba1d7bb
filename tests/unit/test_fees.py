"""What an action may pay for gas: never more than it is worth or the configured cap, always the
next base fee; the market's tip is lowered to what the action can afford, a strategy's bid never."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepers.tx.actions import Action, Call
from keepers.tx.fees import GWEI, FeeEstimator, FeeHistoryUnavailable, Fees, FeeTooHigh
from keepers.tx.manager import TxManager

MIN_TIP = GWEI // 100


def _estimator(max_fee_gwei: float = 500) -> FeeEstimator:
    return FeeEstimator(cast(Any, None), max_fee_gwei)


def _market(base: int, tip: int) -> Fees:
    return Fees(2 * base + tip, tip)  # estimate()'s shape: two base fees of headroom


@given(
    base=st.integers(0, 10**12),
    tip=st.integers(MIN_TIP, 10**11),
    gas=st.integers(21_000, 3_000_000),
    value=st.integers(0, 10**18),
    lower_tip=st.booleans(),
)
def test_a_price_pays_the_base_fee_and_never_more_than_the_action_is_worth(
    base: int, tip: int, gas: int, value: int, lower_tip: bool
) -> None:
    fees = _estimator()
    try:
        got = fees.capped(_market(base, tip), gas, value, lower_tip=lower_tip)
    except FeeTooHigh:
        cap = min(fees.max_fee, value // gas)
        assert cap < base + (min(tip, MIN_TIP) if lower_tip else tip), "refused what it could afford"
        return
    assert got.max_fee_per_gas * gas <= value
    assert got.max_fee_per_gas <= fees.max_fee
    assert got.max_fee_per_gas >= base + got.max_priority_fee_per_gas, "the base fee is always paid"
    if lower_tip:
        assert min(tip, MIN_TIP) <= got.max_priority_fee_per_gas <= tip
    else:
        assert got.max_priority_fee_per_gas == tip


def test_an_action_worth_less_than_the_market_tip_bids_what_it_can_afford() -> None:
    """The devnet's case: recent blocks' median tip 0.1 gwei (the keepers' own bids), an iceberg's
    last clip worth 0.02 gwei a gas; refused block after block, it was never filled."""
    base, tip, gas = 441, GWEI // 10, 200_000
    value = 19_741_242 * gas
    with pytest.raises(FeeTooHigh, match="the market needs"):
        _estimator().capped(_market(base, tip), gas, value)
    got = _estimator().capped(_market(base, tip), gas, value, lower_tip=True)
    assert got == Fees(19_741_242, 19_741_242 - base)


def test_below_the_floor_tip_it_is_still_refused() -> None:
    with pytest.raises(FeeTooHigh):
        _estimator().capped(
            _market(10 * GWEI, GWEI), 100_000, (10 * GWEI + MIN_TIP - 1) * 100_000, lower_tip=True
        )


class _Answers:
    """A provider that answers eth_feeHistory with whatever the test gives it."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def make_request(self, method: str, params: Any) -> Any:
        assert method == "eth_feeHistory"
        return self.answer


def _from_node(answer: Any) -> FeeEstimator:
    return FeeEstimator(cast(Any, SimpleNamespace(provider=_Answers(answer))), 500)


def test_fees_come_from_the_next_base_fee_and_the_median_tip() -> None:
    history = {"baseFeePerGas": ["0x1", "0x64"], "reward": [["0x0"], ["0x3b9aca00"], ["0x77359400"]]}
    got = anyio.run(_from_node({"result": history}).estimate)
    assert got == Fees(2 * 100 + 15 * GWEI // 10, 15 * GWEI // 10), "zero tips are not the market's"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(
    answer=st.one_of(
        _json,
        st.fixed_dictionaries({"result": _json}),
        st.fixed_dictionaries({"result": st.fixed_dictionaries({"baseFeePerGas": _json, "reward": _json})}),
    )
)
def test_a_garbled_fee_history_is_a_node_fault_never_a_price(answer: Any) -> None:
    """Whatever the node answers: a price from a well-formed history, else a node fault (an
    OSError, which the keeper loop retries at the next head as it does any node fault)."""
    assert issubclass(FeeHistoryUnavailable, OSError)
    try:
        got = anyio.run(_from_node(answer).estimate)
    except FeeHistoryUnavailable:
        return
    assert isinstance(answer, dict), "a price only from a JSON-RPC answer"
    assert got.max_fee_per_gas >= got.max_priority_fee_per_gas >= MIN_TIP


def test_the_tip_is_lowered_in_a_bundle_only() -> None:
    """In a mempool a send under the market's tip waits to be bumped, and bumps answer to the
    market, not to the action's worth: there an action it cannot afford is refused."""
    txm = TxManager.__new__(TxManager)  # _priced reads only the fee estimator
    txm.fees = _estimator()
    base, tip, gas = 441, GWEI // 10, 21_000
    action = Action("clip", (Call(to="0x" + "11" * 20, gas_limit=gas),), expected_value_wei=19_741_242 * gas)
    assert txm._priced(action, 0, _market(base, tip), bundled=True).max_priority_fee_per_gas < tip
    with pytest.raises(FeeTooHigh):
        txm._priced(action, 0, _market(base, tip), bundled=False)

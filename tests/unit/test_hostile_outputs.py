"""Outside data that would like the keeper to misbehave, property-based (hypothesis).

Who attacks: a third-party strategy plugin returning junk (wrong types, negative amounts,
addresses that are not addresses, huge lists, one key twice), and a node serving logs that
do not fit their event's ABI. What must hold: nothing raises out of the guard or the
decoder; a malformed action never reaches the transaction manager and is counted; a
malformed log is refused as the node's fault (MalformedLog), never decoded into garbage."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepers.chain.events import MalformedLog
from keepers.engine.guard import MAX_ACTIONS, MAX_GAS, guarded_on_block, refusal
from keepers.engine.strategy import BlockContext, Strategy
from keepers.obs import metrics
from keepers.tx.actions import Action, Call
from tests.unit.test_event_decoding import DECODER, logs

ADDRESS = "0x" + "ab" * 20

junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
    st.binary(max_size=8), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers()),
)  # fmt: skip
good_calls = st.builds(
    Call,
    to=st.just(ADDRESS),
    data=st.binary(max_size=64).map(lambda b: "0x" + b.hex()),
    value=st.integers(0, 2**256 - 1),
    gas_limit=st.integers(21_000, MAX_GAS),
)
bad_calls = st.builds(
    Call,
    to=st.one_of(junk, st.text(max_size=42), st.just("0x" + "ab" * 19)),
    data=st.one_of(junk, st.just("0xabc"), st.just("nothex")),
    value=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**256), st.just(True)),
    gas_limit=st.one_of(st.integers(max_value=20_999), st.integers(min_value=MAX_GAS + 1), junk),
)
calls = st.one_of(good_calls, bad_calls, junk)


def actions(key: st.SearchStrategy[Any]) -> st.SearchStrategy[Action]:
    return st.builds(
        Action,
        idempotency_key=key,
        calls=st.one_of(st.lists(calls, max_size=3).map(tuple), junk),
        expected_value_wei=st.one_of(st.integers(-(2**300), 2**300), junk),
        deadline_blocks=st.one_of(st.integers(-5, 300), junk),
        public_good=st.one_of(st.booleans(), junk),
        coinbase_payment_wei=st.one_of(st.integers(-(2**10), 2**257), junk),
        priority_fee_per_gas=st.one_of(st.none(), st.integers(-(2**10), 2**257), junk),
        order_ids=st.one_of(st.lists(st.integers(-5, 2**257), max_size=3).map(tuple), junk),
    )


outputs = st.one_of(
    junk,
    st.lists(st.one_of(actions(st.one_of(st.text(max_size=4), junk)), junk), max_size=12),
)


class Returns(Strategy):
    def __init__(self, out: Any) -> None:
        self.out = out

    async def on_block(self, ctx: BlockContext) -> Any:
        return self.out


def _guard(out: Any) -> list[Action]:
    ctx: Any = SimpleNamespace(number=7)
    return anyio.run(lambda: guarded_on_block(Returns(out), ctx, keeper="k", name="hostile", timeout=5))


def _invalid() -> float:
    return metrics.STRATEGY_ERRORS.labels("k", "hostile", "invalid")._value.get()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(out=outputs)
def test_junk_from_a_strategy_never_reaches_the_transaction_manager(out: Any) -> None:
    before = _invalid()
    passed = _guard(out)
    assert all(refusal(a) is None for a in passed), "only well-formed actions pass"
    assert all(isinstance(a.calls, tuple) and isinstance(a.order_ids, tuple) for a in passed)
    keys = [a.idempotency_key for a in passed]
    assert len(keys) == len(set(keys)), "a key at most once per block"
    if isinstance(out, list) and all(isinstance(a, Action) for a in out):
        fine = {a.idempotency_key for a in out if refusal(a) is None}
        assert set(keys) == fine, "every well-formed action passes"
        assert _invalid() - before == len(out) - len(passed), "every dropped action is counted"
    elif passed == []:
        assert _invalid() - before >= (1 if out != [] else 0)


def test_a_million_actions_cost_one_line_and_keep_the_first_ones() -> None:
    call = Call(to=ADDRESS, data="0x", value=0, gas_limit=100_000)
    out = [Action(f"a{i}", (call,), expected_value_wei=1) for i in range(1_000_000)]
    before = _invalid()
    passed = _guard(out)
    assert [a.idempotency_key for a in passed] == [f"a{i}" for i in range(MAX_ACTIONS)]
    assert _invalid() - before == 1_000_000 - MAX_ACTIONS


@st.composite
def broken_logs(draw: st.DrawFn) -> dict[str, Any]:
    """A log of a followed event, then broken the way a lying node would break it."""
    _name, log = draw(logs())
    how = draw(st.sampled_from(["short-data", "long-topics", "no-topics", "drop-key", "null", "odd-hex"]))
    log = dict(log)
    if how == "short-data":
        log["data"] = log["data"][: draw(st.integers(0, max(0, len(log["data"]) - 2)))]
    elif how == "long-topics":
        log["topics"] = [*log["topics"], "0x" + "11" * 32]
    elif how == "no-topics":
        log["topics"] = log["topics"][:1] if len(log["topics"]) > 1 else []
    elif how == "drop-key":
        del log[draw(st.sampled_from(sorted(log)))]
    elif how == "null":
        log[draw(st.sampled_from(sorted(log)))] = None
    else:
        log["data"] = "0xabc"
    return log


@settings(max_examples=400, deadline=None)
@given(log=broken_logs())
def test_a_broken_log_is_refused_as_the_nodes_fault_or_decoded_whole(log: dict[str, Any]) -> None:
    try:
        event = DECODER.decode(log)
    except MalformedLog:
        return  # refused: the follower retries the read (keepers.chain.follower)
    # What still decodes (a dropped key the decoder does not read, trailing data ABI decoding
    # ignores, a topic list cut to a non-indexed event's) decodes to every field of its event.
    if event is not None:
        assert event.args, "an event with its fields"

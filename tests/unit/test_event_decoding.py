"""The follower's word-slicing decoder against eth_abi, on random values of every event the
keepers follow: the two must agree field for field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from keepers.chain.artifacts import abi_type, load_artifact
from keepers.chain.events import EventDecoder, MalformedLog

CONTRACTS = ("OrderBook", "LendingMarket", "RebalancingVault", "PriceOracle")
ADDRESS = {name: "0x" + f"{i + 1:040x}" for i, name in enumerate(CONTRACTS)}
DECODER = EventDecoder((ADDRESS[n], load_artifact(n)) for n in CONTRACTS)
EVENTS = [
    (name, item) for name in CONTRACTS for item in load_artifact(name).abi if item.get("type") == "event"
]


def values(param: dict[str, Any]) -> st.SearchStrategy[Any]:
    kind = str(param["type"])
    if kind.endswith("[]"):
        return st.lists(values({**param, "type": kind[:-2]}), max_size=4)
    if kind == "tuple":
        return st.tuples(*(values(c) for c in param["components"]))
    if m := re.fullmatch(r"uint(\d+)", kind):
        return st.integers(0, 2 ** int(m.group(1)) - 1)
    if m := re.fullmatch(r"int(\d+)", kind):
        bits = int(m.group(1))
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if kind == "address":
        return st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
    if kind == "bool":
        return st.booleans()
    if m := re.fullmatch(r"bytes(\d+)", kind):
        return st.binary(min_size=int(m.group(1)), max_size=int(m.group(1)))
    raise AssertionError(f"no value strategy for {kind}")


@st.composite
def logs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    contract, abi = draw(st.sampled_from(EVENTS))
    types = [abi_type(p) for p in abi["inputs"]]
    sig = f"{abi['name']}({','.join(types)})"
    topics = ["0x" + keccak(text=sig).hex()]
    plain_types, plain_values = [], []
    for p, t in zip(abi["inputs"], types, strict=True):
        v = draw(values(p))
        if p["indexed"]:
            topics.append("0x" + encode([t], [v]).hex())
        else:
            plain_types.append(t)
            plain_values.append(v)
    data = "0x" + encode(plain_types, plain_values).hex()
    log = {
        "address": ADDRESS[contract], "topics": topics, "data": data,
        "blockNumber": "0x10", "blockHash": "0x" + "ab" * 32, "transactionHash": "0x" + "cd" * 32,
        "logIndex": "0x3",
    }  # fmt: skip
    return contract, log


@settings(max_examples=400, deadline=None)
@given(logs())
def test_the_fast_decoder_agrees_with_eth_abi(case: tuple[str, dict[str, Any]]):
    _contract, log = case
    event = DECODER.decode(log)
    assert event is not None
    topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
    plan = DECODER._events[(event.contract, topics[0])]
    general = EventDecoder._general(plan.abi, topics, bytes.fromhex(log["data"][2:]))
    assert event.args == general
    assert (event.block_number, event.log_index) == (16, 3), "JSON-RPC quantities are hex"


def test_every_order_book_event_takes_the_fast_path():
    static = [item["name"] for _name, item in EVENTS if _name == "OrderBook"]
    book = ADDRESS["OrderBook"].lower()
    plans = [p for (contract, _t), p in DECODER._events.items() if contract == "OrderBook"]
    assert book in DECODER.by_address
    assert len(plans) == len(static)
    slow = [p.abi["name"] for p in plans if p.data is None or p.topics is None]
    assert slow == []


def test_a_short_log_falls_back_to_eth_abi_which_refuses_it():
    _contract, abi = next((c, a) for c, a in EVENTS if a["name"] == "OrderFilled")
    sig = f"{abi['name']}({','.join(abi_type(p) for p in abi['inputs'])})"
    log = {
        "address": ADDRESS["OrderBook"], "topics": ["0x" + keccak(text=sig).hex(), "0x" + "00" * 32,
        "0x" + "00" * 32], "data": "0x" + "00" * 64, "blockNumber": 1, "blockHash": "0x00",
        "transactionHash": "0x00", "logIndex": 0,
    }  # fmt: skip
    with pytest.raises(MalformedLog, match=r"(?i)insufficient|too few|bytes"):
        DECODER.decode(log)

"""Strategies' calldata is encoded by eth_abi from cached function types (web3's encode_abi cost
a quarter of the keeper's CPU per block): byte for byte what web3 encodes, for every function
of every project contract, with any arguments its types allow."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from eth_abi.tools import get_abi_strategy
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import InvalidAddress, MismatchedABI

from keepers.chain.artifacts import PROJECT_CONTRACTS, abi_type, load_artifact
from keepers.sdk.common import _abi_contract, calldata

FUNCTIONS = [
    (contract, entry["name"], tuple(abi_type(p) for p in entry["inputs"]))
    for contract in PROJECT_CONTRACTS
    for entry in load_artifact(contract).abi
    if entry.get("type") == "function"
]


@pytest.mark.parametrize(("contract", "fn", "types"), FUNCTIONS, ids=[f"{c}.{f}" for c, f, _ in FUNCTIONS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_calldata_is_what_web3_encodes(contract: str, fn: str, types: tuple[str, ...], data: Any) -> None:
    args = data.draw(st.tuples(*(get_abi_strategy(t) for t in types)) if types else st.just(()))
    web3 = _abi_contract(contract).encode_abi(fn, args=list(args))
    assert calldata(contract, fn, *args) == web3


def test_arguments_only_web3_reads_are_encoded_by_web3() -> None:
    """Bytes given as hex text (eth_abi takes bytes only) go through web3's normalizers, and an
    address without a valid checksum is refused as web3 refuses it (eth_abi would encode it)."""
    pool = _abi_contract("LiquidityPool")
    to = Web3.to_checksum_address("0x" + "ab" * 20)
    args = (1, 2, to, "0xdeadbeef")
    assert calldata("LiquidityPool", "swap", *args) == pool.encode_abi("swap", args=list(args))
    bad = "0x" + "aB" * 20
    assert bad != Web3.to_checksum_address(bad)
    for address in (bad, to.lower()):
        with pytest.raises(InvalidAddress):
            calldata("LiquidityPool", "swap", 1, 2, address, b"")


def test_what_eth_abi_would_pad_or_read_loosely_is_refused_as_web3_refuses_it() -> None:
    """A bytes32 one byte short (eth_abi pads it with zeros: a wrong commitment on-chain) and a
    lowercase address inside a sequence web3 does not walk are web3's to refuse."""
    book = _abi_contract("OrderBook")
    with pytest.raises(MismatchedABI):
        book.encode_abi("commitOrder", args=[b"\x01" * 31])
    with pytest.raises(MismatchedABI):
        calldata("OrderBook", "commitOrder", b"\x01" * 31)
    whole = b"\x01" * 32
    assert calldata("OrderBook", "commitOrder", whole) == book.encode_abi("commitOrder", args=[whole])
    lower = "0x" + "ab" * 20
    with pytest.raises(InvalidAddress):
        calldata("PriceOracle", "updatePrices", deque([lower]), [1])

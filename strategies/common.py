"""Helpers the built-in strategies share: calldata encoding and value conversion."""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract

from keepers.chain.artifacts import load_artifact
from keepers.engine.market import MarketSnapshot

#: Used when the snapshot has no fresh price for the native token (USD, 18 decimals).
DEFAULT_NATIVE_USD = 2000 * 10**18


@cache
def _abi_contract(name: str) -> type[Contract]:
    return Web3().eth.contract(abi=load_artifact(name).abi)


def calldata(contract: str, fn: str, *args: Any) -> str:
    """ABI-encoded call data for a project contract's function."""
    return str(_abi_contract(contract).encode_abi(fn, args=list(args)))


def usd_to_wei(snap: MarketSnapshot | None, usd: int, native_token: str | None) -> int:
    """Converts a USD value (18 decimals) to wei of the chain's native token at the oracle price."""
    price = DEFAULT_NATIVE_USD
    if snap is not None and native_token:
        p, fresh = snap.prices.get(native_token.lower(), (0, False))
        if fresh and p:
            price = p
    return usd * 10**18 // price


def checksum(address: str) -> ChecksumAddress:
    return Web3.to_checksum_address(address)

"""Helpers strategies share: calldata encoding, value conversion and the inclusion bid."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import EncodingError
from eth_typing import ChecksumAddress
from eth_utils.address import is_checksum_address
from eth_utils.crypto import keccak
from pydantic import BaseModel, ConfigDict, Field
from web3 import Web3
from web3.contract import Contract

from keepers.chain.artifacts import abi_type, load_artifact
from keepers.engine.market import MarketSnapshot
from keepers.tx.actions import Action

#: Used when the snapshot has no fresh price for the native token (USD, 18 decimals).
DEFAULT_NATIVE_USD = 2000 * 10**18


@cache
def _abi_contract(name: str) -> type[Contract]:
    return Web3().eth.contract(abi=load_artifact(name).abi)


_FIXED_BYTES = re.compile(r"\bbytes\d")


@cache
def _encoding(contract: str, fn: str) -> tuple[bytes, tuple[str, ...]] | None:
    """(selector, argument types) of a function that is not overloaded; None leaves it to web3."""
    found = [e for e in load_artifact(contract).abi if e.get("type") == "function" and e.get("name") == fn]
    if len(found) != 1:
        return None
    types = tuple(abi_type(p) for p in found[0]["inputs"])
    if any(_FIXED_BYTES.search(t) for t in types):
        return None  # eth_abi pads a short bytesN where web3 refuses it
    return keccak(text=f"{fn}({','.join(types)})")[:4], types


def _as_web3_reads_it(value: Any) -> bool:
    """Only ints, bytes, lists and tuples of them, and checksummed addresses: eth_abi encodes
    those as web3 does. Anything else (hex text, an address web3 refuses, another kind of
    sequence, a float) is web3's to judge."""
    if isinstance(value, str):
        return is_checksum_address(value)
    if isinstance(value, list | tuple):
        return all(map(_as_web3_reads_it, value))
    return isinstance(value, int | bytes | bytearray | memoryview)


def calldata(contract: str, fn: str, *args: Any) -> str:
    """ABI-encoded call data for a project contract's function. Encoded by eth_abi straight
    from the function's cached types: web3's encode_abi first walks every argument through
    its normalizers, a quarter of the keeper's CPU per block in the reaction bench. Arguments
    in a form only web3 reads (a dict for a struct, hex text for bytes) and addresses without
    a valid checksum (which web3 refuses) go through web3."""
    encoding = _encoding(contract, fn)
    if encoding is not None and _as_web3_reads_it(args):
        selector, types = encoding
        try:
            return "0x" + (selector + abi_encode(types, args)).hex()
        except (EncodingError, TypeError, ValueError, OverflowError):
            pass
    return str(_abi_contract(contract).encode_abi(fn, args=list(args)))


def usd_to_wei(snap: MarketSnapshot | None, usd: int, native_token: str | None) -> int:
    """Converts a USD value (18 decimals) to wei of the chain's native token at the oracle price."""
    price = DEFAULT_NATIVE_USD
    if snap is not None and native_token:
        p, fresh = snap.prices.get(native_token.lower(), (0, False))
        if fresh and p:
            price = p
    return usd * 10**18 // price


class BidParams(BaseModel):
    """How a strategy bids for inclusion, on top of the work itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Share of the action's expected value paid to the block builder (a BuilderTip call at the
    #: end of the bundle, paid only if it lands). Where keepers compete for the same work, the
    #: builder takes the bundle that pays it most per gas.
    builder_share_bps: int = Field(default=0, ge=0, le=9_000)
    #: Priority fee to bid, gwei per gas; unset follows the market (median of recent blocks).
    priority_fee_gwei: float | None = Field(default=None, ge=0)


def with_bid(action: Action, bid: BidParams) -> Action:
    """The action carrying the strategy's bid."""
    payment = action.expected_value_wei * bid.builder_share_bps // 10_000
    tip = None if bid.priority_fee_gwei is None else int(bid.priority_fee_gwei * 10**9)
    return replace(action, coinbase_payment_wei=payment, priority_fee_per_gas=tip)


def checksum(address: str) -> ChecksumAddress:
    return Web3.to_checksum_address(address)

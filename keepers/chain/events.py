"""Decodes the project's logs into plain, JSON-ready events (ints stay ints, bytes become hex,
structs become dicts by component name)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode
from eth_utils.crypto import keccak

from keepers.chain.artifacts import Artifact
from keepers.chain.reverts import _abi_type


@dataclass(frozen=True)
class Event:
    """One decoded log."""

    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    address: str
    contract: str
    name: str
    args: dict[str, Any]


def _plain(value: Any, param: Mapping[str, Any]) -> Any:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        comps = param["components"]
        if kind.endswith("[]"):
            inner = {**param, "type": kind[:-2]}
            return [_plain(v, inner) for v in value]
        return {c["name"]: _plain(v, c) for v, c in zip(value, comps, strict=True)}
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        inner = {**param, "type": kind[: kind.rindex("[")]}
        return [_plain(v, inner) for v in value]
    return value


def to_hex(value: Any) -> str:
    """0x-prefixed hex of bytes, HexBytes or hex strings."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    text = str(value.hex()) if hasattr(value, "hex") and not isinstance(value, str) else str(value)
    return text if text.startswith("0x") else "0x" + text


class EventDecoder:
    """topic0 -> event ABI for a set of contracts at known addresses."""

    def __init__(self, contracts: Iterable[tuple[str, Artifact]]) -> None:
        self.by_address: dict[str, str] = {}
        self._events: dict[tuple[str, bytes], dict[str, Any]] = {}
        for address, art in contracts:
            self.by_address[address.lower()] = art.name
            for item in art.abi:
                if item.get("type") != "event" or item.get("anonymous"):
                    continue
                sig = f"{item['name']}({','.join(_abi_type(p) for p in item['inputs'])})"
                self._events[(art.name, keccak(text=sig))] = item

    @property
    def addresses(self) -> list[str]:
        return sorted(self.by_address)

    def decode(self, log: Mapping[str, Any]) -> Event | None:
        """The event for a raw log, or None for logs of other contracts or unknown topics."""
        contract = self.by_address.get(str(log["address"]).lower())
        topics = [bytes.fromhex(to_hex(t)[2:]) for t in log["topics"]]
        if contract is None or not topics:
            return None
        abi = self._events.get((contract, topics[0]))
        if abi is None:
            return None
        indexed = [p for p in abi["inputs"] if p["indexed"]]
        plain = [p for p in abi["inputs"] if not p["indexed"]]
        args: dict[str, Any] = {}
        for p, topic in zip(indexed, topics[1:], strict=True):
            (value,) = decode([_abi_type(p)], topic)
            args[p["name"]] = _plain(value, p)
        data = bytes.fromhex(to_hex(log["data"])[2:])
        for p, value in zip(plain, decode([_abi_type(p) for p in plain], data), strict=True):
            args[p["name"]] = _plain(value, p)
        return Event(
            block_number=int(log["blockNumber"]),
            block_hash=to_hex(log["blockHash"]),
            tx_hash=to_hex(log["transactionHash"]),
            log_index=int(log["logIndex"]),
            address=str(log["address"]),
            contract=contract,
            name=str(abi["name"]),
            args=args,
        )

"""Decodes the project's logs into plain, JSON-ready events (ints stay ints, bytes become hex,
structs become dicts by component name).

Events whose fields are all static (every event of the order book, most of the others) are
decoded by slicing 32-byte words: eth_abi's general decoder cost a third of a catch-up's time.
Events with dynamic fields (arrays) go through eth_abi; both give the same values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak

from keepers.chain.artifacts import Artifact, abi_type


class MalformedLog(ValueError):
    """A log of a followed contract that its ABI cannot decode: the node's fault."""


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


def _int(value: Any) -> int:
    """A JSON-RPC quantity (hex string) or an int."""
    return int(value, 16) if isinstance(value, str) else int(value)


#: Decodes a run of 32-byte words starting at an offset into a plain value.
_WordDecoder = Callable[[bytes, int], Any]


def _word_decoder(param: Mapping[str, Any]) -> tuple[_WordDecoder, int] | None:
    """(decoder, words) for a static ABI type, or None when the type is dynamic or unusual."""
    kind = str(param["type"])
    if kind.endswith("]"):
        return None  # arrays: dynamic, or rare enough to leave to eth_abi
    if kind == "tuple":
        parts = [_word_decoder(c) for c in param["components"]]
        if any(p is None for p in parts):
            return None
        plan = [(str(c["name"]), p) for c, p in zip(param["components"], parts, strict=True) if p]

        def tup(data: bytes, at: int) -> dict[str, Any]:
            out = {}
            for name, (dec, words) in plan:
                out[name] = dec(data, at)
                at += 32 * words
            return out

        return tup, sum(w for _, (_, w) in plan)
    if kind.startswith("uint"):
        return (lambda d, at: int.from_bytes(d[at : at + 32], "big")), 1
    if kind.startswith("int"):
        return (lambda d, at: int.from_bytes(d[at : at + 32], "big", signed=True)), 1
    if kind == "address":
        return (lambda d, at: "0x" + d[at + 12 : at + 32].hex()), 1
    if kind == "bool":
        return (lambda d, at: d[at + 31] != 0), 1
    m = _BYTES_N.fullmatch(kind)
    if m:
        n = int(m.group(1))
        return (lambda d, at: "0x" + d[at : at + n].hex()), 1
    return None


_BYTES_N = re.compile(r"bytes([1-9]|[12][0-9]|3[0-2])")


@dataclass(frozen=True)
class _Plan:
    """How to decode one event: its ABI, and word decoders where every field is static."""

    abi: dict[str, Any]
    topics: list[tuple[str, _WordDecoder]] | None
    data: list[tuple[str, _WordDecoder, int]] | None
    data_bytes: int

    @classmethod
    def of(cls, abi: dict[str, Any]) -> _Plan:
        indexed = [(p, _word_decoder(p)) for p in abi["inputs"] if p["indexed"]]
        plain = [(p, _word_decoder(p)) for p in abi["inputs"] if not p["indexed"]]
        topics = [(str(p["name"]), d[0]) for p, d in indexed if d and d[1] == 1]
        data = []
        at = 0
        for p, d in plain:
            if d is None:
                break
            data.append((str(p["name"]), d[0], at))
            at += 32 * d[1]
        return cls(
            abi,
            topics if len(topics) == len(indexed) else None,
            data if len(data) == len(plain) else None,
            at,
        )


class EventDecoder:
    """topic0 -> event ABI for a set of contracts at known addresses."""

    def __init__(self, contracts: Iterable[tuple[str, Artifact]]) -> None:
        self.by_address: dict[str, str] = {}
        self._events: dict[tuple[str, bytes], _Plan] = {}
        for address, art in contracts:
            self.by_address[address.lower()] = art.name
            for item in art.abi:
                if item.get("type") != "event" or item.get("anonymous"):
                    continue
                sig = f"{item['name']}({','.join(abi_type(p) for p in item['inputs'])})"
                self._events[(art.name, keccak(text=sig))] = _Plan.of(item)

    @property
    def addresses(self) -> list[str]:
        return sorted(self.by_address)

    def decode(self, log: Mapping[str, Any]) -> Event | None:
        """The event for a log (raw JSON-RPC or web3's), or None for other contracts' logs or
        unknown topics. A log that does not fit its event's ABI (missing fields, short data,
        a topic too many: a node serving garbage) raises MalformedLog."""
        try:
            return self._decode(log)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, DecodingError) as exc:
            raise MalformedLog(f"malformed log {str(dict(log))[:200]}: {exc!r}"[:400]) from None

    def _decode(self, log: Mapping[str, Any]) -> Event | None:
        contract = self.by_address.get(str(log["address"]).lower())
        topics = [bytes.fromhex(t[2:] if isinstance(t, str) else to_hex(t)[2:]) for t in log["topics"]]
        if contract is None or not topics:
            return None
        plan = self._events.get((contract, topics[0]))
        if plan is None:
            return None
        data = bytes.fromhex(to_hex(log["data"])[2:])
        args = self._fast(plan, topics, data) if plan.topics is not None and plan.data is not None else None
        if args is None:
            args = self._general(plan.abi, topics, data)
        return Event(
            block_number=_int(log["blockNumber"]),
            block_hash=to_hex(log["blockHash"]),
            tx_hash=to_hex(log["transactionHash"]),
            log_index=_int(log["logIndex"]),
            address=str(log["address"]),
            contract=contract,
            name=str(plan.abi["name"]),
            args=args,
        )

    @staticmethod
    def _fast(plan: _Plan, topics: list[bytes], data: bytes) -> dict[str, Any] | None:
        assert plan.topics is not None
        assert plan.data is not None
        if len(topics) != len(plan.topics) + 1 or len(data) < plan.data_bytes:
            return None  # malformed for this ABI: let eth_abi say so
        args: dict[str, Any] = {}
        for (name, dec), topic in zip(plan.topics, topics[1:], strict=True):
            args[name] = dec(topic, 0)
        for name, dec, at in plan.data:
            args[name] = dec(data, at)
        return args

    @staticmethod
    def _general(abi: dict[str, Any], topics: list[bytes], data: bytes) -> dict[str, Any]:
        indexed = [p for p in abi["inputs"] if p["indexed"]]
        plain = [p for p in abi["inputs"] if not p["indexed"]]
        args: dict[str, Any] = {}
        for p, topic in zip(indexed, topics[1:], strict=True):
            (value,) = decode([abi_type(p)], topic)
            args[p["name"]] = _plain(value, p)
        for p, value in zip(plain, decode([abi_type(p) for p in plain], data), strict=True):
            args[p["name"]] = _plain(value, p)
        return args

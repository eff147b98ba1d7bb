"""Turns revert data into the contract's named custom error, so users read
`OrderBook.KeeperFeeTooHigh(feeBps=101, maxBps=100)` instead of hex."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode
from eth_utils.abi import function_signature_to_4byte_selector

from keepers.chain.artifacts import Artifact, abi_type

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)


@dataclass(frozen=True)
class DecodedError:
    """A custom error with its arguments."""

    contract: str
    name: str
    args: dict[str, Any]

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.contract}.{self.name}({inner})"


class RevertDecoder:
    """Maps 4-byte selectors of every known custom error to their ABI entries."""

    def __init__(self, artifacts: Iterable[Artifact]) -> None:
        self._by_selector: dict[bytes, tuple[str, dict[str, Any]]] = {}
        for art in artifacts:
            for err in art.errors():
                types = ",".join(abi_type(p) for p in err["inputs"])
                selector = function_signature_to_4byte_selector(f"{err['name']}({types})")
                self._by_selector.setdefault(selector, (art.name, err))

    def decode(self, data: bytes) -> DecodedError | None:
        """The named error for revert data, or None when the selector is unknown."""
        if len(data) < 4:
            return None
        if data[:4] == _ERROR_STRING:
            (message,) = decode(["string"], data[4:])
            return DecodedError("", "Error", {"message": message})
        found = self._by_selector.get(data[:4])
        if found is None:
            return None
        contract, err = found
        values = decode([abi_type(p) for p in err["inputs"]], data[4:])
        names = [p["name"] or f"arg{i}" for i, p in enumerate(err["inputs"])]
        return DecodedError(contract, err["name"], dict(zip(names, values, strict=True)))

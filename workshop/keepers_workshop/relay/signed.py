"""Signed transactions as the relay's builder needs them: who sent it, at which nonce, with
which fees, and the call that runs it (eth_simulateV1 takes calls, not raw transactions)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import rlp
from eth_account import Account
from eth_account._utils.legacy_transactions import Transaction
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.crypto import keccak
from hexbytes import HexBytes


def tx_hash(raw: bytes) -> str:
    return "0x" + keccak(raw).hex()


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    sender: str
    nonce: int
    gas: int
    to: str | None
    value: int
    data: bytes
    max_fee: int  # legacy and access-list transactions: their gas price
    max_tip: int
    access_list: tuple[Any, ...] | None  # None: a legacy transaction

    @property
    def hash(self) -> str:
        return tx_hash(self.raw)

    def tip_at(self, base_fee: int) -> int:
        """What the coinbase gets per unit of gas (EIP-1559's effective priority fee)."""
        return max(0, min(self.max_tip, self.max_fee - base_fee))

    def call(self) -> dict[str, Any]:
        call: dict[str, Any] = {
            "from": self.sender,
            "nonce": hex(self.nonce),
            "gas": hex(self.gas),
            "value": hex(self.value),
            "input": "0x" + self.data.hex(),
        }
        if self.to is not None:
            call["to"] = self.to
        if self.max_fee == self.max_tip:
            call["gasPrice"] = hex(self.max_fee)
        else:
            call["maxFeePerGas"] = hex(self.max_fee)
            call["maxPriorityFeePerGas"] = hex(self.max_tip)
        if self.access_list:
            call["accessList"] = [
                {
                    "address": "0x" + bytes(e["address"]).hex(),
                    "storageKeys": [_slot(k) for k in e["storageKeys"]],
                }
                for e in self.access_list
            ]
        return call


def _slot(key: Any) -> str:
    raw = key.to_bytes(32, "big") if isinstance(key, int) else bytes(key).rjust(32, b"\0")
    return "0x" + raw.hex()


def _address(value: Any) -> str | None:
    raw = bytes(value) if not isinstance(value, str) else bytes.fromhex(value.removeprefix("0x"))
    return "0x" + raw.hex() if raw else None


@lru_cache(maxsize=4096)  # a bundle is decoded when it arrives and at each simulation
def decode(raw: bytes) -> SignedTx:
    """Raises ValueError on anything that is not a signed transaction."""
    try:
        sender = str(Account.recover_transaction(raw))
        if raw and raw[0] <= 0x7F:
            fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
            fee = int(fields.get("maxFeePerGas", fields.get("gasPrice", 0)))
            tip = int(fields.get("maxPriorityFeePerGas", fee))
            access = tuple(fields.get("accessList", ()))
        else:
            fields = rlp.decode(raw, Transaction).as_dict()
            fee = tip = int(fields["gasPrice"])
            access = None
    except Exception as exc:  # noqa: BLE001 - whatever fails to decode is not a transaction
        raise ValueError(f"not a signed transaction: {exc.__class__.__name__}") from None
    return SignedTx(
        raw=raw,
        sender=sender,
        nonce=int(fields["nonce"]),
        gas=int(fields["gas"]),
        to=_address(fields["to"]),
        value=int(fields["value"]),
        data=bytes(fields["data"]),
        max_fee=fee,
        max_tip=tip,
        access_list=access,
    )

"""What signs our transaction records: a `Signer` is anything that turns (record, fees) into
raw signed transactions. The keeper process holds a `RemoteSigner` (keepers/tx/remote_signer.py)
and never the key; `TxSigner` holds a key and runs in the signer process (and in tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from keepers.tx.fees import Fees

if TYPE_CHECKING:  # the signer process never loads the store
    from keepers.store.tables import TxRecord


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    tx_hash: str
    fees: Fees


class SignerError(RuntimeError):
    """The signer refused or could not be reached; the message never holds key material."""


class Signer(Protocol):
    address: str
    chain_id: int

    async def sign(self, requests: Sequence[tuple[TxRecord, Fees]]) -> list[SignedTx]:
        """Signs each (record, fees) in order, in one round trip where the signer is remote."""
        ...


def tx_request(record: TxRecord, fees: Fees, chain_id: int, sender: str) -> dict[str, Any]:
    """The transaction of a record, as eth_signTransaction takes it (hex quantities)."""
    return {
        "from": sender,
        "to": to_checksum_address(record.to) if record.to else None,
        "value": hex(int(record.value)),
        "data": record.data if record.data.startswith("0x") else "0x" + record.data,
        "gas": hex(int(record.gas_limit)),
        "maxFeePerGas": hex(fees.max_fee_per_gas),
        "maxPriorityFeePerGas": hex(fees.max_priority_fee_per_gas),
        "nonce": hex(int(record.nonce)),
        "chainId": hex(chain_id),
    }


class TxSigner:
    """Signs with a key held in this process: the signer process's half."""

    def __init__(self, account: LocalAccount, chain_id: int) -> None:
        self._account = account
        self.address = account.address
        self.chain_id = chain_id

    def __repr__(self) -> str:  # never show the key, even in a traceback
        return f"TxSigner({self.address}, chain {self.chain_id})"

    async def sign(self, requests: Sequence[tuple[TxRecord, Fees]]) -> list[SignedTx]:
        return [self.sign_one(record, fees) for record, fees in requests]

    def sign_one(self, record: TxRecord, fees: Fees) -> SignedTx:
        return self.sign_request(tx_request(record, fees, self.chain_id, self.address), fees)

    def sign_request(self, request: dict[str, Any], fees: Fees) -> SignedTx:
        """Signs an eth_signTransaction request object (type 2)."""
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": int(request["chainId"], 16),
            "nonce": int(request["nonce"], 16),
            "to": request.get("to"),
            "value": int(request.get("value", "0x0"), 16),
            "data": request.get("data", "0x"),
            "gas": int(request["gas"], 16),
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        signed = self._account.sign_transaction(tx)
        return SignedTx(bytes(signed.raw_transaction), signed.hash.to_0x_hex(), fees)

"""Signs our transaction records. The only module that touches the funds key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from keepers.store.tables import TxRecord
from keepers.tx.fees import Fees


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    tx_hash: str
    fees: Fees


class TxSigner:
    def __init__(self, account: LocalAccount, chain_id: int) -> None:
        self._account = account
        self.address = account.address
        self.chain_id = chain_id

    def __repr__(self) -> str:  # never show the key, even in a traceback
        return f"TxSigner({self.address}, chain {self.chain_id})"

    def sign(self, record: TxRecord, fees: Fees) -> SignedTx:
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": record.nonce,
            # Stored addresses are lowercase (gap fills use the signer's own); signing wants checksums.
            "to": to_checksum_address(record.to) if record.to else None,
            "value": record.value,
            "data": record.data,
            "gas": record.gas_limit,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
        signed = self._account.sign_transaction(tx)
        return SignedTx(bytes(signed.raw_transaction), signed.hash.to_0x_hex(), fees)

"""Public transactions for simulated users: signed locally, sent to the relay's mempool, not
waited for. The relay holds public transactions until it builds the next block, so a node's
pending count lags; nonces are counted here, never below the chain's."""

from __future__ import annotations

import threading
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

GAS_LIMIT = 1_500_000
MAX_FEE = 200 * 10**9
TIP = 10**8  # 0.1 gwei: what users tip sets the market the keepers' fee estimates follow


class PublicSender:
    def __init__(self, w3: Web3, chain_id: int) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self._nonces: dict[str, int] = {}
        self._lock = threading.Lock()

    def nonce(self, address: str) -> int:
        with self._lock:
            n = max(self._nonces.get(address, 0), self.w3.eth.get_transaction_count(address))  # type: ignore[arg-type]
            self._nonces[address] = n + 1
            return n

    def send(self, acct: LocalAccount, contract: Contract, fn: str, *args: Any, gas: int = GAS_LIMIT) -> str:
        """Signs and sends `contract.fn(*args)`; returns the tx hash (not waited for)."""
        tx = getattr(contract.functions, fn)(*args).build_transaction(
            {
                "from": acct.address,
                "nonce": self.nonce(acct.address),
                "gas": gas,
                "maxFeePerGas": MAX_FEE,
                "maxPriorityFeePerGas": TIP,
                "chainId": self.chain_id,
            }
        )
        return self.w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction).to_0x_hex()


def chain_id_cached(url: str) -> HTTPProvider:
    """A provider that asks for the chain id once: web3's validation asks before every
    eth_call and transaction, doubling the round trips of a simulated user. Its own session:
    web3's shared session cache is not needed here (see keepers.chain.http)."""
    return HTTPProvider(
        url,
        session=requests.Session(),
        cache_allowed_requests=True,
        cacheable_requests={RPCEndpoint("eth_chainId")},
    )


def account(key: str) -> LocalAccount:
    acct: LocalAccount = Account.from_key(key)
    return acct

"""Public transactions for simulated users: signed locally, sent to the relay's mempool, not
waited for. The relay holds public transactions until it builds the next block, so a node's
pending count lags; nonces are counted here, never below the chain's. A reorg takes mined
transactions off the chain (anvil and the relay do not put them back in a pool), so counted
nonces are dropped when the referee sees one, and a nonce that has not landed for
LOST_AFTER_BLOCKS is taken as lost and sent again: a counter that only ever grew left the
market sending future nonces after a reorg, and prices stopped moving."""

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
#: Blocks an account's lowest outstanding nonce may stay off the chain before it is taken as
#: lost (reorged out, or refused by the pool) and used again: the relay mines a public
#: transaction in the next block, or the one after when it arrived during a build.
LOST_AFTER_BLOCKS = 3


class PublicSender:
    def __init__(self, url: str, chain_id: int) -> None:
        self.w3 = Web3(chain_id_cached(url))
        # Its own provider for the batched nonce reads: web3 batches per provider, so a send
        # from another thread during a batch would join it.
        self._reads = Web3(chain_id_cached(url))
        self.chain_id = chain_id
        self._nonces: dict[str, int] = {}
        #: address -> (its lowest nonce not on the chain yet, the head when that was first seen)
        self._waiting: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        #: Times counted nonces were given up for the chain's (reorgs seen, nonces lost).
        self.resyncs = 0

    def forget_nonces(self) -> None:
        """The chain was reorged: what was sent may be gone, so every account's next nonce is
        read from the chain again (a reorged-out transaction's nonce is used again)."""
        with self._lock:
            self._nonces.clear()
            self._waiting.clear()
            self.resyncs += 1

    def nonce(self, address: str) -> int:
        with self._lock:
            with self._reads.batch_requests() as batch:  # one round trip: the count and the head
                batch.add(self._reads.eth.get_transaction_count(address))  # type: ignore[arg-type]
                batch.add(self._reads.eth.get_block_number())
                answers: list[Any] = list(batch.execute())
            chain, head = int(answers[0]), int(answers[1])
            n = self._nonces.get(address, chain)
            if n <= chain:
                n = chain
                self._waiting.pop(address, None)
            else:
                lowest, since = self._waiting.get(address, (chain, head))
                if lowest != chain:  # the chain took some: wait for the next one afresh
                    lowest, since = chain, head
                if head - since >= LOST_AFTER_BLOCKS:
                    n = chain  # never landed: reorged out or refused; send from the chain's count
                    self._waiting.pop(address, None)
                    self.resyncs += 1
                else:
                    self._waiting[address] = (lowest, since)
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

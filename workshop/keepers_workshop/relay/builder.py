"""Block building on anvil (started with --no-mining --order fifo): simulate each bundle with
eth_simulateV1 on the next block, choose bundles greedily by what they pay the coinbase per
gas (each simulated after the ones already chosen), place the chosen ones at the top of the
block, the public mempool after them, and mine once. Top of block is where builders put
bundles: a bundle executes on the state its sender simulated, not after whatever the mempool
did first.

eth_simulateV1 runs calls on a block that is never stored, so a simulation's cost does not
grow with the chain's state (anvil's evm_snapshot copies all of it: ~1.5 s at 150k orders).
It takes calls, not signed transactions, and anvil's does not check nonces; so the builder
checks what a node's pool would refuse itself (a nonce out of sequence, more gas than a block
holds) and leaves such a transaction out, as a builder would. anvil refuses a whole
simulation for one transaction it cannot pay for; the builder then finds that one and leaves
it (and its sender's later ones) out.

The builder holds the public mempool itself and empties anvil's pool after each block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak

from keepers_workshop.relay.jsonrpc import JsonRpc, RpcError
from keepers_workshop.relay.signed import SignedTx, decode, tx_hash

COINBASE = "0x000000000000000000000000000000000000c0de"
#: eth_simulateV1 reports every ETH transfer as an ERC-20 Transfer log from this address.
TRANSFER_LOG_ADDRESS = "0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()
COINBASE_TOPIC = "0x" + COINBASE.removeprefix("0x").rjust(64, "0")

__all__ = ["COINBASE", "BlockBuilder", "Bundle", "SimResult", "TxResult", "tx_hash"]


@dataclass
class Bundle:
    txs: list[bytes]
    block: int
    signer: str
    seq: int
    min_timestamp: int = 0
    max_timestamp: int = 0
    reverting: frozenset[str] = frozenset()
    replacement_uuid: str | None = None
    private: bool = False  # a private transaction, resent each block until max block

    @property
    def hash(self) -> str:
        return "0x" + keccak(b"".join(keccak(t) for t in self.txs)).hex()

    def fits(self, block: int, timestamp: int) -> bool:
        if (self.private and block > self.block) or (not self.private and block != self.block):
            return False
        if self.min_timestamp and timestamp < self.min_timestamp:
            return False
        return not (self.max_timestamp and timestamp > self.max_timestamp)


@dataclass
class TxResult:
    tx_hash: str
    gas_used: int
    status: int | None  # None: not included at all
    gas_fees: int  # priority fees paid to the coinbase
    eth_sent_to_coinbase: int
    from_address: str = ""
    to_address: str | None = None
    revert: str | None = None

    @property
    def coinbase_diff(self) -> int:
        return self.gas_fees + self.eth_sent_to_coinbase


@dataclass
class SimResult:
    block: int
    results: list[TxResult] = field(default_factory=list)
    error: str | None = None

    def ok_for(self, bundle: Bundle) -> bool:
        if self.error:
            return False
        for r in self.results:
            if r.status is None:
                return False
            if r.status == 0 and r.tx_hash not in bundle.reverting:
                return False
        return True

    @property
    def gas_used(self) -> int:
        return sum(r.gas_used for r in self.results)

    @property
    def coinbase_diff(self) -> int:
        return sum(r.coinbase_diff for r in self.results)

    @property
    def gas_price(self) -> int:
        return self.coinbase_diff // self.gas_used if self.gas_used else 0


class BlockBuilder:
    def __init__(self, rpc: JsonRpc) -> None:
        self.rpc = rpc
        self.public: list[bytes] = []
        self.last_timestamp = 0
        self.gas_limit = 0

    async def setup(self) -> None:
        await self.rpc("anvil_setCoinbase", COINBASE)
        latest = await self.rpc("eth_getBlockByNumber", "latest", False)
        self.last_timestamp = int(latest["timestamp"], 16)
        self.gas_limit = int(latest["gasLimit"], 16)

    async def head(self) -> int:
        return int(await self.rpc("eth_blockNumber"), 16)

    def next_timestamp(self) -> int:
        return max(self.last_timestamp + 1, int(time.time()))

    async def _send_all(self, txs: list[bytes]) -> list[str | None]:
        """Sends raw txs to anvil's pool; None where the node refused one (bad nonce, funds...)."""
        out: list[str | None] = []
        for raw in txs:
            try:
                out.append(await self.rpc("eth_sendRawTransaction", "0x" + raw.hex()))
            except RpcError:
                out.append(None)
        return out

    async def _head_and_nonces(self, senders: list[str]) -> tuple[int, dict[str, int]]:
        """The head and each sender's next nonce, read in one batch (one consistent state:
        blocks are only mined under the relay's write gate)."""
        batch = [{"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}]
        batch += [
            {"jsonrpc": "2.0", "id": i + 1, "method": "eth_getTransactionCount", "params": [s, "latest"]}
            for i, s in enumerate(senders)
        ]
        answers = {a["id"]: a for a in await self.rpc.raw_batch(batch)}
        for a in answers.values():
            if "error" in a:
                raise RpcError("eth_getTransactionCount", a["error"])
        return int(answers[0]["result"], 16), {
            s: int(answers[i + 1]["result"], 16) for i, s in enumerate(senders)
        }

    def _in_sequence(self, txs: list[SignedTx], nonces: dict[str, int]) -> list[int]:
        """Indexes of the transactions a node's pool would take for the next block, in order."""
        expected = dict(nonces)
        out = []
        for i, tx in enumerate(txs):
            if tx.nonce == expected[tx.sender] and tx.gas <= self.gas_limit:
                expected[tx.sender] += 1
                out.append(i)
        return out

    async def _simulate_calls(
        self, calls: list[dict[str, Any]], target: int, timestamp: int
    ) -> dict[str, Any]:
        blocks = await self.rpc(
            "eth_simulateV1",
            {
                "blockStateCalls": [
                    {
                        "blockOverrides": {
                            "number": hex(target),
                            "time": hex(timestamp),
                            "feeRecipient": COINBASE,
                        },
                        "calls": calls,
                    }
                ],
                "validation": True,
                "traceTransfers": True,
            },
            "latest",
        )
        block: dict[str, Any] = blocks[0]
        return block

    async def _first_refused(
        self, txs: list[SignedTx], runnable: list[int], target: int, timestamp: int
    ) -> int:
        """The first of `runnable` whose prefix the node refuses to simulate (bisection: a
        refused prefix stays refused when it grows)."""
        lo, hi = 0, len(runnable) - 1  # the whole list is refused
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                await self._simulate_calls([txs[i].call() for i in runnable[: mid + 1]], target, timestamp)
                lo = mid + 1
            except RpcError:
                hi = mid
        return runnable[lo]

    async def simulate(self, prefix: list[bytes], bundle_txs: list[bytes], timestamp: int) -> SimResult:
        """Runs prefix + bundle on the next block as that block would run them, without
        touching the node's state; the results are the bundle's."""
        raws = prefix + bundle_txs
        txs = [decode(raw) for raw in raws]
        target, nonces = await self._head_and_nonces(sorted({tx.sender for tx in txs}))
        target += 1
        runnable = self._in_sequence(txs, nonces)
        results: dict[int, TxResult] = {}
        while runnable:
            try:
                block = await self._simulate_calls([txs[i].call() for i in runnable], target, timestamp)
            except RpcError:
                bad = await self._first_refused(txs, runnable, target, timestamp)
                runnable = [i for i in runnable if not (i >= bad and txs[i].sender == txs[bad].sender)]
                continue
            base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
            for i, call in zip(runnable, block["calls"], strict=True):
                results[i] = _result(txs[i], call, base_fee)
            break
        out = [results.get(i) or TxResult(txs[i].hash, 0, None, 0, 0) for i in range(len(prefix), len(raws))]
        return SimResult(target, out)

    async def build(self, candidates: list[Bundle]) -> tuple[int, list[Bundle]]:
        """Mines the next block: the best compatible bundles first, then the public txs."""
        timestamp = self.next_timestamp()
        target = await self.head() + 1
        fitting = [b for b in candidates if b.fits(target, timestamp)]
        scored: list[tuple[int, int, Bundle]] = []
        for b in fitting:
            sim = await self.simulate([], b.txs, timestamp)
            if sim.ok_for(b):
                scored.append((sim.gas_price, -b.seq, b))
        scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
        chosen: list[Bundle] = []
        for _price, _seq, b in scored:
            if chosen:
                prefix = [tx for c in chosen for tx in c.txs]
                if not (await self.simulate(prefix, b.txs, timestamp)).ok_for(b):
                    continue  # conflicts with a better-paying bundle already in the block
            chosen.append(b)
        public = list(self.public)
        # anvil mines in arrival order (--order fifo): bundles first, then the mempool.
        await self._send_all([tx for c in chosen for tx in c.txs])
        sent = await self._send_all(public)
        await self.rpc("evm_mine", timestamp)
        self.last_timestamp = timestamp
        header = await self.rpc("eth_getBlockByNumber", hex(target), False)
        included = {h.lower() for h in header["transactions"]}
        # Public txs the node took but could not fit wait for the next block; refused ones are gone.
        self.public = [raw for raw, h in zip(public, sent, strict=False) if h and h.lower() not in included]
        await self.rpc("anvil_dropAllTransactions")
        return target, chosen


def _result(tx: SignedTx, call: dict[str, Any], base_fee: int) -> TxResult:
    gas = int(call["gasUsed"], 16)
    status = int(call["status"], 16)
    to_coinbase = sum(
        int(log["data"], 16)
        for log in call.get("logs", [])
        if log["address"].lower() == TRANSFER_LOG_ADDRESS
        and log["topics"][0] == TRANSFER_TOPIC
        and log["topics"][2].lower() == COINBASE_TOPIC
    )
    return TxResult(
        tx_hash=tx.hash,
        gas_used=gas,
        status=status,
        gas_fees=gas * tx.tip_at(base_fee),
        eth_sent_to_coinbase=to_coinbase,
        from_address=tx.sender,
        to_address=tx.to,
        revert=None if status else call.get("returnData") or "execution reverted",
    )

"""Block building on anvil (started with --no-mining --order fifo): simulate each bundle by
snapshot -> send -> mine -> read receipts -> revert, choose bundles greedily by what they pay
the coinbase per gas, place the chosen ones at the top of the block, the public mempool after
them, and mine once. Top of block is where builders put bundles: a bundle executes on the
state its sender simulated, not after whatever the mempool did first.

anvil's evm_revert drops mined transactions instead of returning them to its pool, and keeps
in its pool what a simulation sent but did not mine; so the builder holds the public mempool
itself and empties anvil's pool after each simulation and block. anvil also keeps serving
receipts of reverted blocks: only receipts whose block hash is the simulated block's count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak

from keepers.relay.jsonrpc import JsonRpc, RpcError

COINBASE = "0x000000000000000000000000000000000000c0de"


def tx_hash(raw: bytes) -> str:
    return "0x" + keccak(raw).hex()


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

    async def setup(self) -> None:
        await self.rpc("anvil_setCoinbase", COINBASE)
        latest = await self.rpc("eth_getBlockByNumber", "latest", False)
        self.last_timestamp = int(latest["timestamp"], 16)

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

    async def _results(self, raws: list[bytes], sent: list[str | None], block: int) -> list[TxResult]:
        header = await self.rpc("eth_getBlockByNumber", hex(block), False)
        base_fee = int(header.get("baseFeePerGas", "0x0"), 16)
        results = []
        for raw, h in zip(raws, sent, strict=True):
            receipt = await self.rpc("eth_getTransactionReceipt", h) if h else None
            # anvil keeps receipts of reverted simulation blocks: only this block's count.
            if receipt is None or receipt["blockHash"] != header["hash"]:
                results.append(TxResult(tx_hash(raw), 0, None, 0, 0))
                continue
            gas = int(receipt["gasUsed"], 16)
            tip = int(receipt["effectiveGasPrice"], 16) - base_fee
            sent_to_coinbase, revert_data = await self._trace(receipt["transactionHash"])
            results.append(
                TxResult(
                    tx_hash=receipt["transactionHash"],
                    gas_used=gas,
                    status=int(receipt["status"], 16),
                    gas_fees=gas * tip,
                    eth_sent_to_coinbase=sent_to_coinbase,
                    from_address=receipt["from"],
                    to_address=receipt.get("to"),
                    revert=None if int(receipt["status"], 16) else revert_data or "execution reverted",
                )
            )
        return results

    async def _trace(self, h: str) -> tuple[int, str | None]:
        """Wei sent to the coinbase by any call in the tx, and the revert data if it reverted."""
        trace = await self.rpc("debug_traceTransaction", h, {"tracer": "callTracer"})
        revert = trace.get("output") if trace.get("error") else None
        total = 0
        stack: list[dict[str, Any]] = [trace]
        while stack:
            call = stack.pop()
            if call.get("error") is None and (call.get("to") or "").lower() == COINBASE:
                total += int(call.get("value", "0x0"), 16)
            stack.extend(call.get("calls", []))
        return total, revert

    async def simulate(self, prefix: list[bytes], bundle_txs: list[bytes], timestamp: int) -> SimResult:
        """Runs prefix + bundle in a block that is then thrown away."""
        snap = await self.rpc("evm_snapshot")
        try:
            await self._send_all(prefix)
            sent = await self._send_all(bundle_txs)
            await self.rpc("evm_mine", timestamp)
            block = await self.head()
            return SimResult(block, await self._results(bundle_txs, sent, block))
        finally:
            await self.rpc("evm_revert", snap)
            await self.rpc("anvil_dropAllTransactions")

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

"""Replay: run a strategy over a recorded stretch of chain history and report what it would
have done and earned, without a key, a relay or a live chain (so authors can test on history
in CI).

A recording is an anvil state dump taken at its first block (accounts, storage, and the blocks
and logs so far, so every earlier event is in it) plus the raw transactions and timestamps of
each later block. Replay loads the dump into a fresh anvil, re-mines each recorded block from
its own transactions, lets the keeper's follower, candidate source and market reader see it as
they would live, asks the strategy, and simulates each action at the top of the next block
(snapshot, mine, read the receipt, revert): the bundle it would have sent, before the block
that actually came.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import REGISTRY
from web3 import AsyncWeb3, Web3

from keepers.chain.follower import ChainFollower
from keepers.chain.http import SessionHTTPProvider
from keepers.config.contracts import ContractAddresses
from keepers.engine.candidates import candidates_for
from keepers.engine.decide import decide
from keepers.engine.market import SnapshotReader
from keepers.engine.plugins import build_strategy
from keepers.engine.strategy import BlockContext
from keepers.runtime import event_decoder
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.tx.actions import Action
from keepers.tx.manager import explain_revert
from keepers_workshop.devnet.anvil import Anvil, anvil_key
from keepers_workshop.devnet.deploy import Deployment

#: The replaying keeper: a funded dev account of the loaded state (it never signs anything real).
REPLAY_KEEPER_INDEX = 9


class ReplayError(RuntimeError):
    """The recording cannot be replayed (unreadable, or the chain diverged from it)."""


@dataclass(frozen=True)
class RecordedBlock:
    number: int
    timestamp: int
    txs: list[str]  # raw signed transactions, in block order


@dataclass
class Recording:
    chain_id: int
    start_block: int
    state: str  # anvil_dumpState at start_block
    deployment: dict[str, Any]
    blocks: list[RecordedBlock] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Recording:
        try:
            raw = json.loads(path.read_text())
            raw["blocks"] = [RecordedBlock(**b) for b in raw["blocks"]]
            return cls(**raw)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ReplayError(f"{path}: not a recording ({exc})") from None


class Recorder:
    """Records from an anvil node: the state now, then every block mined until finish()."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.start_block = -1
        self.state = ""

    def start(self) -> Recorder:
        self.start_block = int(self.w3.eth.block_number)
        dump = self.w3.provider.make_request("anvil_dumpState", [])  # type: ignore[arg-type]
        if "result" not in dump:
            raise ReplayError(f"the node cannot dump its state (anvil only): {dump.get('error')}")
        self.state = str(dump["result"])
        return self

    def finish(self, last: int | None = None) -> Recording:
        last = int(self.w3.eth.block_number) if last is None else last
        blocks = []
        for n in range(self.start_block + 1, last + 1):
            block = self.w3.eth.get_block(n)
            txs = []
            for h in block["transactions"]:
                raw = self.w3.provider.make_request("eth_getRawTransactionByHash", [h])  # type: ignore[arg-type]
                txs.append(str(raw["result"]))
            blocks.append(RecordedBlock(n, int(block["timestamp"]), txs))
        return Recording(
            chain_id=int(self.w3.eth.chain_id),
            start_block=self.start_block,
            state=self.state,
            deployment=asdict(self.deployment),
            blocks=blocks,
        )


@dataclass(frozen=True)
class ReplayedAction:
    block: int  # the block the strategy saw; the action is simulated at the top of the next
    key: str
    order_ids: list[int]
    expected_value_wei: int
    landed: bool
    reason: str
    gas_used: int
    gas_cost_wei: int
    #: Every order it fills was filled by an earlier action of this replay. History cannot show
    #: the fill that never happened, so the order stays executable in it; repeats are listed but
    #: neither earn nor cost.
    repeat: bool = False


@dataclass
class ReplayReport:
    strategy: str
    kind: str
    first_block: int
    last_block: int
    actions: list[ReplayedAction] = field(default_factory=list)
    strategy_failures: int = 0

    @property
    def counted(self) -> list[ReplayedAction]:
        return [a for a in self.actions if a.landed and not a.repeat]

    @property
    def earned_wei(self) -> int:
        return sum(a.expected_value_wei for a in self.counted)

    @property
    def spent_wei(self) -> int:
        return sum(a.gas_cost_wei for a in self.counted)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(earned_wei=str(self.earned_wei), spent_wei=str(self.spent_wei))
        out["net_wei"] = str(self.earned_wei - self.spent_wei)
        return out


async def _rpc(w3: AsyncWeb3[Any], method: str, *params: Any) -> Any:
    resp = await w3.provider.make_request(method, list(params))
    if "error" in resp:
        raise ReplayError(f"{method}: {resp['error']}")
    return resp["result"]


async def _simulate(
    w3: AsyncWeb3[Any], keeper: str, action: Action, timestamp: int
) -> tuple[bool, str, int, int]:
    """Runs the action's calls in a block at `timestamp` that is then thrown away."""
    snap = await _rpc(w3, "evm_snapshot")
    try:
        hashes = []
        for call in action.calls:
            tx = {
                "from": keeper,
                "to": call.to,
                "data": call.data,
                "value": hex(call.value),
                "gas": hex(call.gas_limit),
            }
            hashes.append(await _rpc(w3, "eth_sendTransaction", tx))
        await _rpc(w3, "evm_mine", timestamp)
        gas = cost = 0
        for h in hashes:
            receipt = await _rpc(w3, "eth_getTransactionReceipt", h)
            if receipt is None:
                return False, "not included (nonce, balance or fee)", gas, cost
            gas += int(receipt["gasUsed"], 16)
            cost += int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
            if int(receipt["status"], 16) != 1:
                trace = await _rpc(w3, "debug_traceTransaction", h, {"tracer": "callTracer"})
                return False, f"would revert: {explain_revert(trace.get('output'))}", gas, cost
        return True, "", gas, cost
    finally:
        await _rpc(w3, "evm_revert", snap)
        await _rpc(w3, "anvil_dropAllTransactions")


def _strategy_failures(kind: str, name: str) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "keepers_strategy_errors_total", {"keeper": kind, "strategy": name, "kind": k}
        )
        or 0.0
        for k in ("exception", "timeout", "invalid")
    )


async def replay(
    recording: Recording,
    strategy_name: str,
    kind: str,
    params: dict[str, Any],
    *,
    workdir: Path | None = None,
) -> ReplayReport:
    strategy = build_strategy(strategy_name, kind, params)
    dep = Deployment(**recording.deployment)
    addrs = ContractAddresses(
        dep.order_book, dep.oracle, dep.lending_market, dep.vault, dep.flash_liquidator,
        tuple(p["address"] for p in dep.pools), dep.builder_tip or None,
    )  # fmt: skip
    keeper = Web3().eth.account.from_key(anvil_key(REPLAY_KEEPER_INDEX)).address
    report = ReplayReport(
        strategy_name, kind, recording.start_block + 1, recording.start_block + len(recording.blocks)
    )
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, Anvil(chain_id=recording.chain_id) as anvil:
        w3 = AsyncWeb3(SessionHTTPProvider(anvil.url))
        await _rpc(w3, "anvil_loadState", recording.state)
        # anvil's clock starts at the wall clock and refuses to mine before it; the recording's
        # blocks are older than this anvil whenever the recorded chain ran behind real time.
        loaded = await w3.eth.get_block("latest")
        await _rpc(w3, "anvil_setTime", int(loaded["timestamp"]))
        await _rpc(w3, "evm_setAutomine", False)
        engine = make_engine(f"sqlite:///{Path(tmp) / 'replay.sqlite'}")
        await anyio.to_thread.run_sync(migrate, engine)
        follower = ChainFollower(w3, engine, recording.chain_id, event_decoder(addrs), name=f"replay-{kind}")
        candidates = candidates_for(engine, recording.chain_id, kind)
        reader = SnapshotReader(w3, list(addrs.pools), addrs.oracle, addrs.order_book)
        await follower.sync()  # everything up to the recording's first block, from the dump
        filled: set[int] = set()
        for i, blk in enumerate(recording.blocks):
            for raw in blk.txs:
                await _rpc(w3, "eth_sendRawTransaction", raw)
            await _rpc(w3, "evm_mine", blk.timestamp)
            mined = await w3.eth.get_block(blk.number)
            if len(mined["transactions"]) != len(blk.txs):
                raise ReplayError(
                    f"block {blk.number}: re-mined {len(mined['transactions'])} of {len(blk.txs)} txs"
                )
            block = await follower.sync(blk.number)
            snapshot = await reader.read(block.number)
            ctx = BlockContext(
                chain="replay", chain_id=recording.chain_id, number=block.number, timestamp=block.timestamp,
                candidates=await candidates(block, snapshot), contracts=addrs.as_dict(), market=snapshot,
                reader=w3, keeper_address=keeper,
            )  # fmt: skip
            failed_before = _strategy_failures(kind, strategy_name)
            # The live keeper's decision, the same function: what it would send, replayed.
            actions = await decide(strategy, ctx, kind=kind, name=strategy_name, timeout=30)
            report.strategy_failures += int(_strategy_failures(kind, strategy_name) - failed_before)
            nxt = recording.blocks[i + 1].timestamp if i + 1 < len(recording.blocks) else blk.timestamp + 1
            for action in actions:
                landed, reason, gas, cost = await _simulate(w3, keeper, action, nxt)
                repeat = bool(action.order_ids) and set(action.order_ids) <= filled
                if landed:
                    filled.update(action.order_ids)
                report.actions.append(
                    ReplayedAction(
                        blk.number,
                        action.idempotency_key,
                        list(action.order_ids),
                        action.expected_value_wei,
                        landed,
                        reason,
                        gas,
                        cost,
                        repeat,
                    )
                )
        await w3.provider.disconnect()
    return report

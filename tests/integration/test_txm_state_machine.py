"""The transaction manager as a state machine (hypothesis), on real SQLite and PostgreSQL:
2 to 4 workers (processes on one key) submit and settle in any interleaving while blocks are
built with or without their bundles, reorged, workers restart (their memory lost) and lose
their lease. Whatever happens: no two live records hold one nonce, no transition raises, and
once the chain quiets down every action ended exactly once, no nonce gap is left and the store
equals the chain.

The chain is a model (blocks of signed transactions, nonces checked as a node checks them):
the interleavings searched here cannot be produced on demand by a real node, and the
manager's view of any chain goes through one small interface (keepers.tx.chain.ChainReads).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlmodel import select

from keepers.ha.lease import Fence, LeaseStore, NotLeader
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import TxRecord
from keepers.tx.actions import Action, Call
from keepers.tx.chain import Receipt
from keepers.tx.fees import FeeEstimator, Fees
from keepers.tx.flashbots import Simulation
from keepers.tx.manager import Outcome, Status, TxManager
from keepers.tx.records import TxRecords
from keepers.tx.routes import BundleRoute, Sent
from keepers.tx.signer import TxSigner
from keepers.tx.states import MINED, PENDING, TxState

pytestmark = pytest.mark.integration

KEY = Account.from_key("0x" + "42" * 32)
SINK = "0x000000000000000000000000000000000000dEaD"
#: `./dev deep` searches ten times as many interleavings.
DEEP = os.environ.get("KEEPERS_DEEP") == "1"
TERMINAL = {Status.INCLUDED, Status.MISSED, Status.REJECTED, Status.REORGED}


@dataclass
class ModelChain:
    """Blocks of (hash, nonce) of our key; a bundle lands whole at its target block if its
    nonces continue the chain's, as a builder includes it."""

    blocks: list[list[tuple[str, int]]] = field(default_factory=lambda: [[]])
    pending: dict[int, list[list[bytes]]] = field(default_factory=dict)
    forks: int = 0

    @property
    def head(self) -> int:
        return len(self.blocks) - 1

    def block_hash(self, n: int) -> str:
        return "0x" + keccak(f"{self.forks}:{n}:{self.blocks[n]}".encode()).hex()

    def nonce(self) -> int:
        return sum(len(b) for b in self.blocks)

    def build(self, include: bool) -> None:
        target = self.head + 1
        block: list[tuple[str, int]] = []
        if include:
            for raws in self.pending.get(target, []):
                txs = [("0x" + keccak(r).hex(), _nonce(r)) for r in raws]
                first = self.nonce()
                if [n for _, n in txs] == list(range(first, first + len(txs))):
                    block = txs
                    break
        self.pending.pop(target, None)
        self.blocks.append(block)

    def reorg(self, depth: int) -> None:
        """The last `depth` blocks are replaced by empty ones (their transactions gone)."""
        depth = min(depth, self.head)
        self.forks += 1
        del self.blocks[len(self.blocks) - depth :]
        self.blocks += [[] for _ in range(depth)]


def _nonce(raw: bytes) -> int:
    return int(TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["nonce"])


class ModelReads:
    def __init__(self, chain: ModelChain) -> None:
        self.chain = chain

    async def latest(self) -> tuple[int, int] | None:
        return self.chain.head, 1_000 + self.chain.head

    async def receipts(self, hashes: Iterable[str]) -> dict[str, Receipt]:
        wanted = set(hashes)
        return {
            h: Receipt(n, self.chain.block_hash(n), 21_000, 1)
            for n, block in enumerate(self.chain.blocks)
            for h, _ in block
            if h in wanted
        }

    async def canonical(self, numbers: Iterable[int]) -> dict[int, str]:
        return {n: self.chain.block_hash(n) for n in numbers if n <= self.chain.head}

    async def nonce(self, address: str) -> int:
        return self.chain.nonce()

    async def balance(self, address: str) -> int:
        return 10**18

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        return 21_000


class ModelRoute(BundleRoute):
    def __init__(self, chain: ModelChain) -> None:
        self.chain = chain
        self.builders = ()

    async def simulate(self, raws: Sequence[bytes], target: int, timestamp: int) -> Simulation | None:
        return None  # decided on chain, as with a relay that cannot simulate

    async def send(self, raws: Sequence[bytes], target: int, replacement_uuid: str) -> Sent:
        if target <= self.chain.head:
            return Sent(False, errors=("not in the future",))
        self.chain.pending.setdefault(target, []).append(list(raws))
        return Sent(True, "0x" + keccak(b"".join(raws)).hex())


class FixedFees(FeeEstimator):
    def __init__(self) -> None:
        self.max_fee = 10**12

    async def estimate(self, blocks: int = 10, percentile: float = 50.0) -> Fees:
        return Fees(2 * 10**9, 10**8)


class Lease:
    """A worker's real lease, which the test can take away: the worker goes on presenting the
    token it was granted (a stale leader), and the store refuses it while the lease is lost."""

    def __init__(self, leases: LeaseStore, scope: str) -> None:
        self.leases, self.scope = leases, scope
        self.token = 0
        self.held = True

    @property
    def held(self) -> bool:
        return self._held

    @held.setter
    def held(self, held: bool) -> None:
        if held:
            term = self.leases.acquire(self.scope, "worker", ttl=3600)
            assert term is not None
            self.token = term.token
        else:
            self.leases.release(self.scope, "worker")
        self._held = held

    def fence(self) -> Fence:
        return Fence(self.leases, "worker", ((self.scope, self.token),))


class TxManagerMachine(RuleBasedStateMachine):
    db_url = ""

    @initialize(workers=st.integers(min_value=2, max_value=4))
    def start(self, workers: int) -> None:
        self.engine = make_engine(self.db_url)
        migrate(self.engine)
        self.signer = "0x" + os.urandom(20).hex()  # a fresh key id per example: no cleanup needed
        self.chain = ModelChain()
        leases = LeaseStore(self.engine)
        self.fences = [Lease(leases, f"model:{self.signer}:{i}") for i in range(workers)]
        self.workers = [self._worker(i) for i in range(workers)]
        self.outcomes: dict[str, list[Status]] = {}
        self.submitted: set[str] = set()
        self.n = 0

    def _worker(self, i: int) -> TxManager:
        records = TxRecords(self.engine, 1, self.signer, fences=self.fences[i])
        signer = TxSigner(KEY, 1)
        signer.address = self.signer  # the records' key id; signatures still come from KEY
        return TxManager(
            w3=None,  # type: ignore[arg-type]
            records=records, signer=signer, fees=FixedFees(), route=ModelRoute(self.chain), chain="model",
            max_target_blocks=3, block_time=1.0, confirmations=3, reads=ModelReads(self.chain),
        )  # fmt: skip

    def _note(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.status in TERMINAL:
                self.outcomes.setdefault(o.action_key, []).append(o.status)

    def _run(self, coro: Any) -> Any:
        return anyio.run(lambda: coro)

    @rule(w=st.integers(0, 3), count=st.integers(1, 3), deadline=st.integers(1, 3))
    def submit(self, w: int, count: int, deadline: int) -> None:
        txm = self.workers[w % len(self.workers)]
        actions = []
        for _ in range(count):
            self.n += 1
            key = f"{self.signer}:a{self.n}"  # idempotency keys are global: unique per example
            actions.append(Action(key, (Call(to=SINK, value=1, gas_limit=21_000),), 10**18, deadline))
        try:
            out = self._run(txm.submit(actions, self.chain.head, 1_000 + self.chain.head))
        except NotLeader:
            for a in actions:
                self.outcomes.setdefault(a.idempotency_key, []).append(Status.REJECTED)
            return
        self.submitted.update(a.idempotency_key for a in actions)
        self._note(out)

    @rule(w=st.integers(0, 3))
    def settle(self, w: int) -> None:
        self._note(self._run(self.workers[w % len(self.workers)].settle(self.chain.head)))

    @rule(include=st.booleans())
    def build(self, include: bool) -> None:
        self.chain.build(include)

    @precondition(lambda self: self.chain.head >= 2)
    @rule(depth=st.integers(1, 2))
    def reorg(self, depth: int) -> None:
        self.chain.reorg(depth)

    @rule(w=st.integers(0, 3))
    def restart(self, w: int) -> None:
        self.workers[w % len(self.workers)] = self._worker(w % len(self.workers))

    @rule(w=st.integers(0, 3), held=st.booleans())
    def lease(self, w: int, held: bool) -> None:
        self.fences[w % len(self.fences)].held = held

    @invariant()
    def one_live_record_per_nonce(self) -> None:
        if not hasattr(self, "workers"):
            return
        live = self.workers[0].records.live_nonces()
        assert len(live) == len(set(live)), "two live records on one nonce"

    def teardown(self) -> None:
        if not hasattr(self, "workers"):
            return
        for f in self.fences:
            f.held = True
        # The chain quiets down: blocks with whatever is pending, every worker settles, and
        # the maintenance round (reconcile, gap fill) runs; until nothing is in flight.
        for _ in range(12):
            self.chain.build(True)
            for txm in self.workers:
                self._note(self._run(txm.settle(self.chain.head)))
            self._run(self.workers[0].maintain(self.chain.head))
            for txm in self.workers:
                self._note(self._run(txm.submit([], self.chain.head, 1_000 + self.chain.head)))
        records = self.workers[0].records
        with records._session() as s:
            rows = list(s.exec(select(TxRecord).where(TxRecord.signer == self.signer)))
        assert not [r for r in rows if TxState(r.state) in PENDING], "nothing left in flight"
        assert records.gaps() == [], "no nonce gap"
        mined = sorted(r.nonce for r in rows if TxState(r.state) in MINED)
        assert mined == list(range(self.chain.nonce())), "the store equals the chain"
        for key in self.submitted:
            ended = self.outcomes.get(key, [])
            # Included and then reorged out cancel: what is left is how it ended, once.
            final = list(ended)
            while Status.REORGED in final:
                at = final.index(Status.REORGED)
                assert at > 0, f"{key}: reorged before anything: {ended}"
                assert final[at - 1] is Status.INCLUDED, f"{key}: reorged before included: {ended}"
                del final[at - 1 : at + 1]
            assert len(final) == 1, f"{key} ended {ended or 'never'}"


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_the_transaction_manager_under_any_interleaving(db_url: str) -> None:
    TxManagerMachine.db_url = db_url
    run = TxManagerMachine.TestCase
    run.settings = settings(
        max_examples=400 if DEEP else 40,
        stateful_step_count=50 if DEEP else 40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    run().runTest()

"""The transaction manager against a relay that fails and a node that lags (a model chain, real
SQLite records, real signing). Who attacks: nothing malicious, the world. What must hold: a
no-op replacing a public transaction goes where that transaction is (the mempool), so it
replaces it, whichever route bundles are on by then; a node that lags never reopens a
finalized transaction, so a landed fill is never booked missed nor its nonce freed.
(Found by an adversarial review: both happened before the fix.)"""

from __future__ import annotations

import anyio
import pytest
from eth_account import Account
from eth_utils.crypto import keccak
from sqlmodel import Session, col, select

from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import ActionLedger, TxRecord
from keepers.tx.actions import Action, Call
from keepers.tx.flashbots import Simulation
from keepers.tx.manager import Status, TxManager
from keepers.tx.records import TxRecords
from keepers.tx.routes import MempoolRoute, RelayFallback, Sent
from keepers.tx.signer import TxSigner
from keepers.tx.states import TxState
from tests.integration.test_txm_state_machine import (
    FixedFees,
    ModelChain,
    ModelReads,
    ModelRoute,
    _nonce,
)

pytestmark = pytest.mark.integration

KEY = Account.from_key("0x" + "42" * 32)
SINK = "0x000000000000000000000000000000000000dEaD"


class Relay(ModelRoute):
    """A relay that can be down (refuses sends, cannot simulate)."""

    def __init__(self, chain: ModelChain) -> None:
        super().__init__(chain)
        self.down = False
        self.sent_bundles: list[list[bytes]] = []

    async def simulate(self, raws, target, timestamp):
        if self.down:
            return None
        return Simulation("0x", 0, 0, 0, target - 1, [])

    async def send(self, raws, target, replacement_uuid):
        if self.down:
            return Sent(False, errors=("503",))
        self.sent_bundles.append(list(raws))
        return await super().send(raws, target, replacement_uuid)


class Mempool(MempoolRoute):
    """A public mempool: nonce -> latest raw; never mined unless the test says so."""

    def __init__(self) -> None:
        self.kind = "public"
        self.bump_after_blocks = 1
        self.pool: dict[int, bytes] = {}

    async def send_raw(self, raw: bytes) -> Sent:
        self.pool[_nonce(raw)] = raw
        return Sent(True)


def mine_public(chain: ModelChain, pool: Mempool) -> None:
    n = chain.nonce()
    block = []
    while n in pool.pool:
        raw = pool.pool.pop(n)
        block.append(("0x" + keccak(raw).hex(), n))
        n += 1
    chain.pending.pop(chain.head + 1, None)
    chain.blocks.append(block)


def make(tmp_path, chain, route, fallback=None, confirmations=0, reads=None):
    engine = make_engine(f"sqlite:///{tmp_path / 'k.sqlite'}")
    migrate(engine)
    signer = TxSigner(KEY, 1)
    records = TxRecords(engine, 1, signer.address)
    return TxManager(
        w3=None,
        records=records,
        signer=signer,
        fees=FixedFees(),
        route=route,
        chain="m",
        confirmations=confirmations,
        max_target_blocks=3,
        block_time=1.0,
        reads=reads or ModelReads(chain),
        fallback=fallback,
    ), engine


def act(key: str) -> Action:
    return Action(key, (Call(to=SINK, value=1, gas_limit=21_000),), 10**18, 3)


def run(coro):
    return anyio.run(lambda: coro)


class LagReads(ModelReads):
    """A node `lag` blocks behind: its nonce and receipts are as of head - lag."""

    def __init__(self, chain, lag):
        super().__init__(chain)
        self.lag = lag

    def _top(self):
        return self.chain.head - self.lag

    async def nonce(self, address):
        return sum(len(b) for b in self.chain.blocks[: self._top() + 1])

    async def receipts(self, hashes):
        got = await super().receipts(hashes)
        return {h: r for h, r in got.items() if r.block_number <= self._top()}


def test_a_noop_replacing_a_public_transaction_goes_by_the_mempool_after_bundles_are_back(tmp_path):
    chain = ModelChain()
    relay, pool = Relay(chain), Mempool()
    fb = RelayFallback(pool, after=1)
    txm, engine = make(tmp_path, chain, relay, fb)
    for _ in range(5):
        chain.build(False)
    relay.down = True  # one refused bundle: the fallback takes over
    run(txm.submit([act("a1")], chain.head, 1000))
    assert fb.active
    chain.build(False)
    run(txm.settle(chain.head))  # a1's bundle missed: dropped, nonce 0 freed
    relay.down = False  # a2 goes public on nonce 0; the probe after the send finds the relay
    run(txm.submit([act("a2")], chain.head, 1000))
    assert not fb.active
    assert 0 in pool.pool
    for _ in range(4):  # a2 is not mined: bumped, then replaced by a no-op at its deadline
        chain.build(False)
        run(txm.settle(chain.head))
    with Session(engine) as s:
        recs = s.exec(select(TxRecord).order_by(col(TxRecord.id))).all()
    (cancel,) = [r for r in recs if r.idempotency_key.endswith(":cancel")]
    assert cancel.bundle_hash is None, "the no-op went to the mempool, not to the relay"
    assert not any(_nonce(raw) == 0 for b in relay.sent_bundles for raw in b)
    assert "0x" + keccak(pool.pool[0]).hex() == cancel.tx_hash, "it replaced a2 in the mempool"
    mine_public(chain, pool)
    for _ in range(2):
        chain.build(False)
        run(txm.settle(chain.head))
    with Session(engine) as s:
        landed = s.get(TxRecord, cancel.id)
        a2 = s.exec(select(ActionLedger).where(ActionLedger.idempotency_key == "a2")).one()
    assert landed is not None
    assert TxState(landed.state) in (TxState.CONFIRMED, TxState.FINALIZED), "the no-op holds nonce 0"
    assert a2.status == "missed", "a2 was replaced: it did not land"
    run(txm.submit([act("a3")], chain.head, 1000))
    with Session(engine) as s:
        a3 = s.exec(select(TxRecord).where(TxRecord.idempotency_key == "a3#0")).one()
    assert a3.nonce == 1, "nonce 0 was never handed out again"


def test_a_lagging_node_never_reopens_a_finalized_fill(tmp_path):
    chain = ModelChain()
    relay = Relay(chain)
    reads = LagReads(chain, 0)
    txm, engine = make(tmp_path, chain, relay, confirmations=2, reads=reads)
    run(txm.submit([act("f1")], chain.head, 1000))
    chain.build(True)  # f1 mined in block 1
    for _ in range(3):
        chain.build(False)
    got = run(txm.settle(chain.head))
    assert [(o.action_key, o.status) for o in got] == [("f1", Status.INCLUDED)]
    reads.lag = 5  # the node the pool now uses is behind block 1: nonce 0, no receipt
    run(txm.maintain(chain.head))
    chain.build(False)
    got += run(txm.settle(chain.head))
    reads.lag = 0
    run(txm.maintain(chain.head))
    with Session(engine) as s:
        rec = s.exec(select(TxRecord)).one()
        led = s.exec(select(ActionLedger)).one()
    assert TxState(rec.state) is TxState.FINALIZED
    assert led.status == "included"
    assert [o.status for o in got] == [Status.INCLUDED], "reported once, never reorged or missed"

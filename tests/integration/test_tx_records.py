"""Transaction records (nonces and state) shared by real processes on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from sqlmodel import Session, select

from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import ActionLedger, TxRecord
from keepers.tx.records import Intent, LedgerUpdate, Move, TxRecords
from keepers.tx.states import TxState

pytestmark = pytest.mark.integration

SIGNER = "0x00000000000000000000000000000000000000aa"


def _worker(url: str, worker: str, count: int, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.nonce_worker", url, "1", SIGNER, worker, str(count), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one(nm: TxRecords, key: str) -> TxRecord:
    (rec,) = nm.allocate([Intent(key, to=None)])
    return rec


def _assert_no_duplicate_and_fill_gaps(nm: TxRecords) -> list[int]:
    live = nm.live_nonces()
    assert len(live) == len(set(live)), "two live transactions on one nonce"
    for gap in nm.gaps():
        assert nm.claim_gap(gap, f"gap-{gap}", (1, 1), 100) is not None
    live = nm.live_nonces()
    assert nm.gaps() == []
    assert live == list(range(len(live))), "after gap filling the live nonces are contiguous from 0"
    return live


def test_four_processes_share_one_sequence(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    procs = [_worker(db_url, f"w{i}", 500, seed=i) for i in range(4)]
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        summaries.append(json.loads(out))
    assert sum(s["allocated"] for s in summaries) == 2000
    released = sum(s["released"] for s in summaries)
    assert released > 0, "the run exercised releases"

    nm = TxRecords(engine, 1, SIGNER)
    live = _assert_no_duplicate_and_fill_gaps(nm)
    # Released nonces were reused before new ones, so at most the releases at the end are missing.
    assert len(live) >= 2000 - released


def test_sigkill_mid_allocation_leaves_nothing_inconsistent(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    victim = _worker(db_url, "victim", 100_000, seed=7)
    steady = _worker(db_url, "steady", 300, seed=8)
    time.sleep(1.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    _out, err = steady.communicate(timeout=300)
    assert steady.returncode == 0, err[-2000:]

    nm = TxRecords(engine, 1, SIGNER)
    started = time.monotonic()
    rec = _one(nm, "after-kill")
    assert time.monotonic() - started < 10, "no lock left behind by the killed process"
    assert rec.nonce >= 0
    _assert_no_duplicate_and_fill_gaps(nm)


def _sent(nm: TxRecords, rec: TxRecord, tx_hash: str) -> None:
    assert rec.id is not None
    nm.apply([Move(rec.id, TxState.UNCONFIRMED, "sent", {"tx_hash": tx_hash})])


def test_reconcile_confirms_drops_and_detects_reorg(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    recs = nm.allocate([Intent(f"k{i}", to=None) for i in range(4)])
    assert [r.nonce for r in recs] == [0, 1, 2, 3], "one batch, consecutive nonces"
    for r in recs:
        _sent(nm, r, f"0xhash{r.nonce}")
    mined = {"0xhash0": 10, "0xhash1": 11}  # nonce 2 was used by someone else's tx
    report = nm.reconcile(3, lambda rec: mined.get(rec.tx_hash or ""))
    assert sorted(report.confirmed) == [recs[0].id, recs[1].id]
    assert report.consumed == [recs[2].id]
    assert nm.get(recs[3].id).state == TxState.UNCONFIRMED  # type: ignore[arg-type,union-attr]

    # A reorg takes nonce 1 back off the chain.
    report = nm.reconcile(1, lambda rec: {"0xhash0": 10}.get(rec.tx_hash or ""))
    assert report.reorged == [recs[1].id]
    assert nm.get(recs[1].id).state == TxState.UNCONFIRMED  # type: ignore[arg-type,union-attr]


def test_reconcile_reopens_a_finalized_record_the_chain_no_longer_has(db_url: str) -> None:
    """A reorg deeper than `confirmations` (any reorg, with 0): the record was finalized, so
    settlement no longer watches it, and its nonce would stay held while every later
    transaction waits on it. The chain's count says it is gone; below that count, finalized is
    left alone; and without a reorg seen (`after_reorg`) the count alone never reopens it (a
    node that lags reads a lower count)."""
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    recs = nm.allocate([Intent(f"f{i}", to=None) for i in range(2)])
    for r in recs:
        assert r.id is not None
        _sent(nm, r, f"0xfinal{r.nonce}")
        nm.apply([Move(r.id, TxState.CONFIRMED, "mined"), Move(r.id, TxState.FINALIZED, "0 confirmations")])
    assert nm.reconcile(1, lambda rec: None).reorged == [], "a low count alone is not a reorg"
    assert nm.get(recs[1].id or 0).state == TxState.FINALIZED  # type: ignore[union-attr]
    report = nm.reconcile(1, lambda rec: None, after_reorg=True)  # the chain lost nonce 1 only
    assert report.reorged == [recs[1].id]
    assert nm.get(recs[1].id or 0).state == TxState.UNCONFIRMED  # type: ignore[union-attr]
    assert nm.get(recs[0].id or 0).state == TxState.FINALIZED  # type: ignore[union-attr]


def test_what_reconcile_decides_is_booked_in_the_ledger_with_it(db_url: str):
    """Reconciliation decides records too (found mined, nonce used by another transaction);
    their actions' ledger rows end in the same transaction, or nothing would ever end them (the
    settlement books only what it moves itself)."""
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    rows = [
        ActionLedger(
            chain_id=1, keeper="k", strategy="s", idempotency_key=key, decided_block=1, status="pending"
        )
        for key in ("a", "b")
    ]
    a, b = nm.allocate([Intent("a#0", to=None), Intent("b#0", to=None)], ledger=rows)
    _sent(nm, a, "0xa")
    _sent(nm, b, "0xb")

    def ended(records: list[TxRecord], moves: list[Move]) -> list[LedgerUpdate]:
        key = {r.id: r.idempotency_key.split("#")[0] for r in records}
        return [
            LedgerUpdate(key[m.tx_id], "included" if m.target is TxState.CONFIRMED else "missed")
            for m in moves
        ]

    report = nm.reconcile(2, lambda rec: 7 if rec.tx_hash == "0xa" else None, ended)
    assert (report.confirmed, report.consumed) == ([a.id], [b.id])
    with Session(engine) as s:
        status = {r.idempotency_key: r.status for r in s.exec(select(ActionLedger))}
    assert status == {"a": "included", "b": "missed"}
    assert nm.gaps() == []
    assert _one(nm, "c").nonce == 2, "the consumed nonce is not handed out again"


def test_a_process_without_the_action_settles_it_keeping_its_valuation(db_url: str):
    """A replica sharing the signer settles what another sent: None keeps the sender's earned
    and builder payment in the ledger row (0 would overstate `keepers pnl` by the payment)."""
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    row = ActionLedger(
        chain_id=1, keeper="k", strategy="s", idempotency_key="a", decided_block=1, status="pending",
        order_ids=[4], earned_wei=10**18, coinbase_wei=3 * 10**17,
    )  # fmt: skip
    (rec,) = nm.allocate([Intent("a#0", to=None)], ledger=[row])
    _sent(nm, rec, "0xa")
    nm.apply(
        [Move(rec.id or 0, TxState.CONFIRMED, "mined")],
        [LedgerUpdate("a", "included", 7, ("0xa",), earned_wei=None, gas_used=21_000, coinbase_wei=None)],
    )
    assert nm.orders_of(["a", "other"]) == {"a": [4]}
    with Session(engine) as s:
        (booked,) = s.exec(select(ActionLedger)).all()
    assert (booked.status, booked.earned_wei, booked.coinbase_wei) == ("included", 10**18, 3 * 10**17)


def test_counter_never_falls_below_the_chain(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    nm.reconcile(42, lambda _r: None)
    assert _one(nm, "first").nonce == 42


def test_a_nonce_given_up_on_a_wrong_reading_is_recovered(db_url: str):
    """A node that served a block later thrown away said nonce 0 was used; the next reading
    says it was not. The nonce must come back rather than stay a gap nobody holds."""
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    rec = _one(nm, "k0")
    _sent(nm, rec, "0xhash0")
    report = nm.reconcile(1, lambda _r: None)  # the wrong reading
    assert report.consumed == [rec.id]
    assert _one(nm, "k1").nonce == 1

    report = nm.reconcile(0, lambda _r: None)  # the chain as it is
    assert report.recovered == [0]
    assert report.gaps == [0], "nonce 1 is waiting on it"
    assert _one(nm, "k2").nonce == 0
    assert nm.reconcile(0, lambda _r: None).recovered == [], "recovered once, not again"


def test_transitions_are_compare_and_set(db_url: str):
    """A move from a state the machine does not allow changes nothing; a repeated move is a
    no-op, not an error; a drop frees the nonce exactly once."""
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    rec = _one(nm, "x")
    assert rec.id is not None
    assert nm.apply([Move(rec.id, TxState.FINALIZED)]) == [], "unstarted -> finalized is refused"
    assert nm.get(rec.id).state == TxState.UNSTARTED  # type: ignore[union-attr]
    assert nm.apply([Move(rec.id, TxState.DROPPED, "missed")]) == [rec.id]
    assert nm.apply([Move(rec.id, TxState.DROPPED, "missed again")]) == [], "repeat: a no-op"
    assert nm.apply([Move(rec.id, TxState.UNCONFIRMED)]) == [], "dropped is final"
    assert _one(nm, "y").nonce == 0, "the freed nonce comes back, once"
    assert _one(nm, "z").nonce == 1


def test_a_batch_renumbered_after_a_refusal_keeps_a_run(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    nm = TxRecords(engine, 1, SIGNER)
    a, b, c = nm.allocate([Intent(k, to=None) for k in ("a#0", "b#0", "c#0")])
    kept = nm.renumber([a.id or 0, c.id or 0], [b.id or 0], "refused by simulation")
    assert [r.nonce for r in kept] == [0, 1], "c moves down onto b's nonce"
    assert nm.get(b.id or 0).state == TxState.DROPPED  # type: ignore[union-attr]
    assert _one(nm, "d").nonce == 2, "the left-over nonce is free again"
    assert nm.live_nonces() == [0, 1, 2]

"""The nonce manager shared by real processes on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.tx.nonces import Intent, NonceManager
from keepers.tx.states import InvalidTransition, TxState

pytestmark = pytest.mark.integration

SIGNER = "0x00000000000000000000000000000000000000aa"


def _worker(url: str, worker: str, count: int, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.nonce_worker", url, "1", SIGNER, worker, str(count), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_no_duplicate_and_fill_gaps(nm: NonceManager) -> list[int]:
    live = nm.live_nonces()
    assert len(live) == len(set(live)), "two live transactions on one nonce"
    for gap in nm.gaps():
        assert nm.claim_gap(gap, f"gap-{gap}") is not None
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

    nm = NonceManager(engine, 1, SIGNER)
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

    nm = NonceManager(engine, 1, SIGNER)
    started = time.monotonic()
    rec = nm.allocate(Intent("after-kill", to=None))
    assert time.monotonic() - started < 10, "no lock left behind by the killed process"
    assert rec.nonce >= 0
    _assert_no_duplicate_and_fill_gaps(nm)


def test_reconcile_confirms_drops_and_detects_reorg(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    nm = NonceManager(engine, 1, SIGNER)
    recs = [nm.allocate(Intent(f"k{i}", to=None)) for i in range(4)]
    for r in recs:
        assert r.id is not None
        nm.transition(r.id, TxState.IN_FLIGHT, tx_hash=f"0xhash{r.nonce}")
        nm.transition(r.id, TxState.UNCONFIRMED)
    mined = {"0xhash0": 10, "0xhash1": 11}  # nonce 2 was used by someone else's tx
    report = nm.reconcile(3, mined.get)
    assert sorted(report.confirmed) == [recs[0].id, recs[1].id]
    assert report.consumed == [recs[2].id]
    assert nm.get(recs[3].id).state == TxState.UNCONFIRMED  # type: ignore[union-attr]

    # A reorg takes nonce 1 back off the chain.
    report = nm.reconcile(1, {"0xhash0": 10}.get)
    assert report.reorged == [recs[1].id]
    assert nm.get(recs[1].id).state == TxState.UNCONFIRMED  # type: ignore[union-attr]


def test_counter_never_falls_below_the_chain(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    nm = NonceManager(engine, 1, SIGNER)
    nm.reconcile(42, lambda _h: None)
    assert nm.allocate(Intent("first", to=None)).nonce == 42


def test_a_nonce_given_up_on_a_wrong_reading_is_recovered(db_url: str):
    """A node that served a block later thrown away said nonce 0 was used; the next reading
    says it was not. The nonce must come back rather than stay a gap nobody holds."""
    engine = make_engine(db_url)
    migrate(engine)
    nm = NonceManager(engine, 1, SIGNER)
    rec = nm.allocate(Intent("k0", to=None))
    assert rec.id is not None
    nm.transition(rec.id, TxState.IN_FLIGHT, tx_hash="0xhash0")
    report = nm.reconcile(1, lambda _h: None)  # the wrong reading
    assert report.consumed == [rec.id]
    assert nm.allocate(Intent("k1", to=None)).nonce == 1

    report = nm.reconcile(0, lambda _h: None)  # the chain as it is
    assert report.recovered == [0]
    assert report.gaps == [0], "nonce 1 is waiting on it"
    assert nm.allocate(Intent("k2", to=None)).nonce == 0
    assert nm.reconcile(0, lambda _h: None).recovered == [], "recovered once, not again"


def test_state_machine_refuses_illegal_moves(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    nm = NonceManager(engine, 1, SIGNER)
    rec = nm.allocate(Intent("x", to=None))
    assert rec.id is not None
    with pytest.raises(InvalidTransition, match="unstarted -> confirmed"):
        nm.transition(rec.id, TxState.CONFIRMED)
    nm.release(rec.id, "missed")
    with pytest.raises(InvalidTransition):
        nm.transition(rec.id, TxState.IN_FLIGHT)

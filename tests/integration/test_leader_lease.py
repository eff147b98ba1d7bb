"""Leader leases and fencing on real SQLite and PostgreSQL: one holder at a time, a new token
on every change of hands, and a paused leader fenced out of the nonce manager."""

from __future__ import annotations

import time

import anyio
import pytest

from keepers.ha.elector import LeaderElector
from keepers.ha.lease import LeaseStore, NotLeader, holder_id, is_gone
from keepers.ha.shards import ShardSet
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.tx.records import Intent, TxRecords

pytestmark = pytest.mark.integration

SIGNER = "0x" + "ab" * 20


def _store(db_url: str) -> LeaseStore:
    engine = make_engine(db_url)
    migrate(engine)
    return LeaseStore(engine)


def test_one_holder_at_a_time_and_a_new_token_on_takeover(db_url: str):
    leases = _store(db_url)
    first = leases.acquire("1/limit-stop", "a", ttl=0.6)
    assert first is not None
    assert first.token == 1
    assert leases.acquire("1/limit-stop", "b", ttl=0.6) is None, "b must wait while a holds it"
    renewed = leases.acquire("1/limit-stop", "a", ttl=0.6)
    assert renewed is not None
    assert renewed.token == 1, "a renewal keeps the token"
    assert leases.acquire("1/oracle", "b", ttl=0.6) is not None, "scopes are independent"

    time.sleep(0.8)  # a stops renewing (dead or paused)
    taken = leases.acquire("1/limit-stop", "b", ttl=5)
    assert taken is not None
    assert taken.token == 2
    assert leases.acquire("1/limit-stop", "a", ttl=5) is None, "a woke up and is not the leader"
    assert leases.holder("1/limit-stop")[:2] == ("b", 2)

    leases.release("1/limit-stop", "b")
    again = leases.acquire("1/limit-stop", "a", ttl=5)
    assert again is not None, "a released lease is free at once"
    assert again.token == 3


def test_a_paused_leader_is_fenced_out_of_nonce_allocation(db_url: str):
    leases = _store(db_url)
    a = LeaderElector(leases, "1/limit-stop", lease_seconds=1.0, renew_seconds=0.2, holder="a")
    b = LeaderElector(leases, "1/limit-stop", lease_seconds=1.0, renew_seconds=0.2, holder="b")
    nonces_a = TxRecords(leases.engine, 1, SIGNER, fences=a)
    nonces_b = TxRecords(leases.engine, 1, SIGNER, fences=b)

    assert anyio.run(a.step)
    assert not anyio.run(b.step)
    rec = nonces_a.allocate([Intent("a-1", to=None)])[0]
    assert rec.fence_token == 1
    with pytest.raises(NotLeader):
        nonces_b.allocate([Intent("b-1", to=None)])[0]

    fence_before_pause = a.fence()
    time.sleep(0.85)  # a is paused: no renewal
    assert not a.is_leader, "a stops acting on its own before the lease lapses in the database"
    time.sleep(0.3)
    assert anyio.run(b.step), "b takes the lapsed lease"
    # a resumes with what it held before the pause: the database refuses it.
    with pytest.raises(NotLeader):
        TxRecords(leases.engine, 1, SIGNER, fences=_Stale(fence_before_pause)).allocate(
            [Intent("a-2", to=None)]
        )[0]
    rec_b = nonces_b.allocate([Intent("b-2", to=None)])[0]
    assert rec_b.fence_token == 2
    assert rec_b.nonce == rec.nonce + 1, "one nonce sequence across the handover, no gap"
    assert not anyio.run(a.step), "and a's next renewal finds b in charge"


class _Stale:
    """A fence source frozen at what a paused process still believes."""

    def __init__(self, fence: object) -> None:
        self._fence = fence

    def fence(self):
        return self._fence


def test_shards_spread_over_live_members_never_doubled_and_move_on_join_and_death(db_url: str):
    leases = _store(db_url)

    def member(name: str) -> ShardSet:
        return ShardSet(leases, "1/limit-stop", 16, lease_seconds=1.0, renew_seconds=0.2, holder=name)

    def settle(sets: list[ShardSet], rounds: int = 3) -> None:
        for _ in range(rounds):
            for s in sets:
                anyio.run(s.step)
                held = [x.held for x in sets]
                assert all(not (a & b) for i, a in enumerate(held) for b in held[i + 1 :]), (
                    "a shard held twice"
                )

    a, b, c = member("a"), member("b"), member("c")
    settle([a, b, c])
    assert a.held | b.held | c.held == frozenset(range(16)), "every shard has an owner"
    assert all(len(s.held) >= 2 for s in (a, b, c)), "and the work is spread"

    d = member("d")
    settle([a, b, c, d])
    assert d.held, "a newcomer gets its share within a few renewals"
    assert a.held | b.held | c.held | d.held == frozenset(range(16))

    lost = c.held  # c dies: it stops renewing; its leases lapse and the others take its shards
    time.sleep(1.1)
    settle([a, b, d])
    assert lost <= a.held | b.held | d.held
    assert a.held | b.held | d.held == frozenset(range(16))

    # The fence: an action on a shard this replica does not hold gets no nonce.
    nonces = TxRecords(leases.engine, 1, SIGNER, fences=a)
    theirs = next(iter(b.held))
    with a.acting_for([theirs]), pytest.raises(NotLeader):
        nonces.allocate([Intent("a-theirs", to=None)])[0]
    ours = next(iter(a.held))
    with a.acting_for([ours]):
        assert nonces.allocate([Intent("a-ours", to=None)])[0].nonce == 0


_HOLD = """
import sys, time
from keepers.ha.lease import LeaseStore, holder_id
from keepers.store.engine import make_engine
leases = LeaseStore(make_engine(sys.argv[1]))
holder = holder_id()
assert leases.acquire(sys.argv[2], holder, ttl=600) is not None
leases.acquire("1/shards/member/" + holder, holder, ttl=600)
print(holder, flush=True)
time.sleep(600)
"""


def test_a_killed_holder_on_this_host_is_replaced_at_once(db_url: str):
    """A keeper kill -9'd and restarted in place leads again without waiting out the TTL (10
    minutes here): its lease names a process of this host that no longer runs. A holder that
    still runs keeps its lease."""
    import subprocess
    import sys

    leases = _store(db_url)
    me = holder_id()

    def hold(scope: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, db_url, scope], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    alive, alive_holder = hold("1/oracle")
    dead, dead_holder = hold("1/limit-stop")
    dead_member, _ = hold("1/twap")
    try:
        for proc in (dead, dead_member):
            proc.kill()
            proc.wait()
        assert leases.acquire("1/oracle", me, ttl=5) is None, "a live holder keeps its lease"
        assert not is_gone(alive_holder)
        assert is_gone(dead_holder)
        taken = leases.acquire("1/limit-stop", me, ttl=5)
        assert taken is not None, "the dead holder's lease is taken at once"
        assert taken.token == 2, "with a new token (the fence)"
        assert leases.live_holders("1/shards/member/") == [alive_holder], "a dead member is no member"
        assert leases.acquire("1/twap", me, ttl=5) is not None, "and its other leases are free"
    finally:
        alive.kill()
        alive.wait()
    assert not is_gone("elsewhere:1:abcdef:00000000:1"), "another host's holder is presumed alive"
    assert not is_gone("a"), "an id without the fields is presumed alive"

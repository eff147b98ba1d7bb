"""High availability with real processes on PostgreSQL: replicas of one keeper elect a leader
through a lease; kill -9 of the leader hands the work to a standby within the lease; a leader
paused (SIGSTOP) past its lease is fenced when it wakes; no order is filled twice and no nonce
is used twice."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from keepers.ha.lease import LeaseStore
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers_workshop.devnet.anvil import anvil_key, free_port
from keepers_workshop.testing import KEEPER_KEY_INDEX, Devnet

pytestmark = pytest.mark.integration

LEASE, RENEW = 2.0, 0.4
SCOPE = "31337/limit-stop"


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Devnet]:
    d = Devnet(tmp_path).start()
    try:
        yield d
    finally:
        d.stop()


class Replica:
    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "KEEPERS_SIGNER_KEY": anvil_key(KEEPER_KEY_INDEX),  # replicas share the funds key
            "KEEPERS_REPUTATION_KEY": anvil_key(18),
            "KEEPERS__HEALTH_PORT": str(self.port),
        }
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keepers.cli", "run", "limit-stop", "--config", str(config)],
            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ready(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def _config(tmp_path: Path, d: Devnet, db_url: str, shards: int = 0) -> Path:
    assert d.relay is not None
    dep = tmp_path / "deployment.json"
    dep.write_text(d.deployment.to_json())
    cfg = tmp_path / "keepers.toml"
    cfg.write_text(
        f"""
database_url = "{db_url}"
signer = {{ env = "KEEPERS_SIGNER_KEY" }}
drain_timeout = 5
order_api = {{ port = 0 }}  # three replicas on one machine

[ha]
lease_seconds = {LEASE}
renew_seconds = {RENEW}

[chains.devnet]
chain_id = 31337
rpc = [{{ url = "{d.relay.url}", rate_limit = 1000 }}]
block_time = 1
submission = "flashbots"
confirmations = 0
contracts = {{ deployment_file = "{dep}" }}

[chains.devnet.flashbots]
relays = ["{d.relay.url}"]
reputation_key = {{ env = "KEEPERS_REPUTATION_KEY" }}
target_blocks = 1

[keepers.limit-stop]
chain = "devnet"
strategy = "best-execution"
shards = {shards}
params = {{ native_token = "{d.deployment.tokens["WETH"]}" }}
"""
    )
    return cfg


def _until(cond: Callable[[], bool], d: Devnet | None = None, timeout: float = 30.0) -> float:
    """Waits for `cond`, building a block every 0.5 s if a devnet is given; returns the wait."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met in time")
        if d is not None:
            d.mine()
        time.sleep(0.5)
    return time.monotonic() - started


def _leader_pid(leases: LeaseStore) -> tuple[int, int]:
    held = leases.holder(SCOPE)
    assert held is not None
    holder, token, _expires = held
    return int(holder.split(":")[1]), token


def _place(d: Devnet) -> int:
    # 1 WETH for at least 1,000 USDC with WETH near 2,000: executable at once.
    return d.place("WETH/USDC", "limit", 10**18, 1_000 * 10**6, fee_bps=30)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_kill_the_leader_then_pause_the_next_one(tmp_path: Path, devnet: Devnet, db_url: str):
    d = devnet
    cfg = _config(tmp_path, d, db_url)
    engine = make_engine(db_url)
    migrate(engine)
    leases = LeaseStore(engine)
    replicas = [Replica(cfg, tmp_path / f"replica-{i}.log") for i in range(3)]
    try:
        _until(lambda: all(r.ready() for r in replicas), d, timeout=60)
        by_pid = {r.proc.pid: r for r in replicas}
        pid, token = _leader_pid(leases)
        first = by_pid[pid]

        oid = _place(d)
        _until(lambda: bool(d.fills(oid)), d)

        # kill -9 the leader: a standby must fill the next order within the lease.
        first.proc.kill()
        first.proc.wait()
        killed_at = time.monotonic()
        oid2 = _place(d)
        _until(lambda: bool(d.fills(oid2)), d, timeout=LEASE * 5)
        takeover = time.monotonic() - killed_at
        pid2, token2 = _leader_pid(leases)
        assert pid2 != pid
        assert token2 > token
        assert takeover < LEASE + RENEW + 4, f"fills resumed {takeover:.1f}s after the leader died"

        # Pause the new leader past its lease: the last replica takes over; the paused one, on
        # waking, must not submit anything under its old token.
        second = by_pid[pid2]
        second.proc.send_signal(signal.SIGSTOP)
        paused_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        _until(lambda: _leader_pid(leases)[0] not in (pid, pid2), d, timeout=LEASE * 5)
        _pid3, token3 = _leader_pid(leases)
        second.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        oid3 = _place(d)
        _until(lambda: bool(d.fills(oid3)), d)
        _until(lambda: time.monotonic() - woke > 3 * RENEW, d)  # give the woken one its chances

        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT nonce, fence_token, state, idempotency_key, created_at FROM txrecord ORDER BY id"
                )
            ).all()
        live = [r for r in rows if r.state != "dropped"]
        assert len({r.nonce for r in live}) == len(live), "no nonce used twice"
        by_token = {r.fence_token for r in rows if r.idempotency_key.startswith("limit-stop:")}
        assert by_token <= {token, token2, token3}
        late = [r for r in rows if r.fence_token == token2 and r.created_at.replace(tzinfo=None) > paused_at]
        assert late == [], "the paused leader allocated nothing under its old lease"
        assert any(r.fence_token == token3 for r in rows), "the third replica submitted"
        for o in (oid, oid2, oid3):
            assert len(d.fills(o)) == 1, f"order {o} filled once"
        woken = second.log.read_text()
        assert "standing by" in woken, "the paused leader learned it lost the lease"
    finally:
        for r in replicas:
            r.stop()


#: (market, amount in, min out): each executable at once, about 70% of the market price asked.
ORDERS = (
    ("WETH/USDC", 10**18, 1_400 * 10**6),
    ("USDC/WETH", 2_000 * 10**6, 7 * 10**17),
    ("WBTC/USDC", 10**6, 420 * 10**6),  # 0.01 WBTC
    ("DAI/USDC", 1_000 * 10**18, 700 * 10**6),
    ("WETH/DAI", 10**18, 1_400 * 10**18),
)


def _round(d: Devnet, moves: int) -> list[int]:
    """One order in each market, after the market has moved."""
    weth_usdc = d.pools("WETH", "USDC")[0]
    d.swap(weth_usdc, "WETH" if moves % 2 else "USDC", 10**17 if moves % 2 else 200 * 10**6)
    return [d.place(m, "limit", a, o, fee_bps=30, trader=i % 3) for i, (m, a, o) in enumerate(ORDERS)]


def _acted(logs: list[Path]) -> dict[tuple[int, str], set[str]]:
    """(order id, decision key) -> the replicas that sent an action for it."""
    seen: dict[tuple[int, str], set[str]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            if '"event": "action"' not in line or '"status": "rejected"' in line:
                continue
            entry = json.loads(line)
            for oid in entry.get("orders") or []:
                seen.setdefault((oid, entry["key"]), set()).add(log.name)
    return seen


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_sharded_replicas_join_and_die_under_a_moving_market(tmp_path: Path, devnet: Devnet, db_url: str):
    d = devnet
    cfg = _config(tmp_path, d, db_url, shards=8)
    logs = [tmp_path / f"replica-{i}.log" for i in range(3)]
    replicas = [Replica(cfg, logs[0]), Replica(cfg, logs[1])]
    try:
        _until(lambda: all(r.ready() for r in replicas), d, timeout=60)
        time.sleep(3 * RENEW)  # a renewal or two to spread the shards
        placed = _round(d, 0)
        _until(lambda: all(d.fills(o) for o in placed), d)

        replicas.append(Replica(cfg, logs[2]))  # a third joins: shards move to it
        _until(replicas[2].ready, d, timeout=60)
        time.sleep(4 * RENEW)
        joined = _round(d, 1)
        _until(lambda: all(d.fills(o) for o in joined), d)

        replicas[0].proc.kill()  # one dies: its shards lapse to the others within the lease
        replicas[0].proc.wait()
        died_at = time.monotonic()
        after = _round(d, 2)
        _until(lambda: all(d.fills(o) for o in after), d, timeout=LEASE * 6)
        assert time.monotonic() - died_at < LEASE + RENEW + 8

        for o in placed + joined + after:
            assert len(d.fills(o)) == 1, f"order {o} filled once"
        acted = _acted(logs)
        doubled = {k: v for k, v in acted.items() if len(v) > 1}
        assert doubled == {}, f"two replicas sent the same order in the same block: {doubled}"
        workers = {name for names in acted.values() for name in names}
        assert len(workers) >= 2, f"the work was split over the replicas: {workers}"
    finally:
        for r in replicas:
            r.stop()

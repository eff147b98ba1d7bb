"""Leader leases in the store, with fencing tokens.

A lease row names the holder of a scope (one keeper on one chain) and when its lease ends, by
the database's own clock, so replicas on hosts with skewed clocks agree. Acquiring and renewing
are one upsert; `token` rises every time the lease changes hands (or is taken again after it
lapsed). The token is the fence: the nonce manager checks it in the same database transaction
that hands out a nonce, so a leader that was paused past its lease and lost it cannot allocate,
sign or send anything once it wakes, whatever it still believes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlmodel import Session

from keepers.store.engine import is_sqlite


class NotLeader(RuntimeError):
    """The fence refused: this process no longer holds the lease it acts under."""


def _process_space() -> str | None:
    """Names this boot and pid namespace: pids are comparable only between holders that share
    it (pods on one node with host networking share a host name, not their pids). None where
    /proc does not describe this process's own namespace (no /proc, or a pid namespace made
    without remounting it): then no holder is ever judged gone."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{pidns}".encode()).hexdigest()[:8]


class _Unknown(Exception):
    """/proc would not say (hidden by hidepid or ProtectProc, out of file descriptors...)."""


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot); None only if there is certainly no
    such process; _Unknown when that cannot be told."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        try:  # hidepid=2 hides other users' processes as if absent: ask the kernel too
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass  # EPERM: it exists, another user's
        raise _Unknown(pid) from None
    except OSError as exc:
        raise _Unknown(pid) from exc
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


_SPACE = _process_space()


def holder_id() -> str:
    """This process, unique across restarts: host, pid and a random suffix; where /proc tells,
    also the process space and the pid's start time, so a successor on the same host can see
    that this process is gone (`is_gone`) and need not wait for its lease to lapse."""
    base = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    try:
        started = _started(os.getpid())
    except _Unknown:
        started = None
    return base if _SPACE is None or started is None else f"{base}:{_SPACE}:{started}"


def is_gone(holder: str) -> bool:
    """True only when `holder` is certainly a dead process: it ran on this host, in this boot
    and pid namespace, and its pid is now free or belongs to a process started at another time.
    Anything else (another host, an id without those fields, a process /proc will not show) is
    presumed alive: a wrong True would let two live processes lead at once."""
    parts = holder.split(":")
    if _SPACE is None or len(parts) != 5 or parts[0] != socket.gethostname() or parts[3] != _SPACE:
        return False
    if not re.fullmatch(r"[0-9]{1,10}", parts[1]) or not re.fullmatch(r"[0-9]{1,20}", parts[4]):
        return False
    try:
        return _started(int(parts[1])) != parts[4]
    except _Unknown:
        return False


def _now_sql(engine: Engine) -> str:
    if is_sqlite(engine):
        return "((julianday('now') - 2440587.5) * 86400.0)"
    return "extract(epoch from clock_timestamp())::double precision"


@dataclass(frozen=True)
class Term:
    """A held lease: the token to fence with, and the holder's view of when it ends."""

    token: int
    expires_at: float  # database clock


class LeaseStore:
    """Acquire, renew, release and check leases of one engine's `lease` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now = now = _now_sql(engine)  # a constant SQL expression per dialect, never input
        # Insert, or take over a lapsed lease (new token), or renew our own (same token).
        self._acquire = text(
            f"""
            INSERT INTO lease (scope, holder, token, expires_at)
            VALUES (:scope, :holder, 1, {now} + :ttl)
            ON CONFLICT (scope) DO UPDATE SET
                token = CASE WHEN lease.holder = excluded.holder AND lease.expires_at > {now}
                             THEN lease.token ELSE lease.token + 1 END,
                holder = excluded.holder,
                expires_at = excluded.expires_at
            WHERE lease.holder = excluded.holder OR lease.expires_at <= {now}
            RETURNING token, expires_at
            """  # noqa: S608
        )
        held = "scope = :scope AND holder = :holder AND token = :token AND expires_at > "
        self._check = text(f"SELECT 1 FROM lease WHERE {held}{now}")  # noqa: S608
        self._release = text("UPDATE lease SET expires_at = 0 WHERE scope = :scope AND holder = :holder")

    def acquire(self, scope: str, holder: str, ttl: float) -> Term | None:
        """Takes or renews the lease for `ttl` seconds; None if another holder has it."""
        return self.acquire_many([scope], holder, ttl).get(scope)

    def acquire_many(self, scopes: list[str], holder: str, ttl: float) -> dict[str, Term]:
        """`acquire` for several scopes in one transaction; the ones granted."""
        granted: dict[str, Term] = {}
        with self.engine.begin() as conn:
            for scope in scopes:
                params = {"scope": scope, "holder": holder, "ttl": ttl}
                row = conn.execute(self._acquire, params).first()
                if row is None and self._expire_gone(conn, scope):
                    row = conn.execute(self._acquire, params).first()
                if row is not None:
                    granted[scope] = Term(int(row[0]), float(row[1]))
        return granted

    def _expire_gone(self, conn: Connection, scope: str) -> bool:
        """Ends every lease of the holder of `scope` if that holder is a dead process on this
        host (a keeper killed and restarted in place takes over at once, not after the TTL).
        Safe for fencing: a dead process allocates nothing."""
        row = conn.execute(text("SELECT holder FROM lease WHERE scope = :scope"), {"scope": scope}).first()
        if row is None or not is_gone(str(row[0])):
            return False
        conn.execute(text("UPDATE lease SET expires_at = 0 WHERE holder = :holder"), {"holder": row[0]})
        return True

    def release_many(self, scopes: list[str], holder: str) -> None:
        with self.engine.begin() as conn:
            for scope in scopes:
                conn.execute(self._release, {"scope": scope, "holder": holder})

    def live_holders(self, prefix: str) -> list[str]:
        """Holders of unexpired leases whose scope starts with `prefix` (membership)."""
        query = text(
            f"SELECT holder FROM lease WHERE scope LIKE :pattern AND expires_at > {self._now} ORDER BY holder"  # noqa: S608
        )
        with self.engine.begin() as conn:
            holders = [str(r[0]) for r in conn.execute(query, {"pattern": prefix + "%"})]
            gone = [h for h in holders if is_gone(h)]
            for h in gone:  # a dead replica on this host is no member: its shards move now
                conn.execute(text("UPDATE lease SET expires_at = 0 WHERE holder = :holder"), {"holder": h})
        return [h for h in holders if h not in gone]

    def release(self, scope: str, holder: str) -> None:
        """Ends our lease now, so a standby takes over without waiting for it to lapse."""
        self.release_many([scope], holder)

    def holder(self, scope: str) -> tuple[str, int, float] | None:
        """(holder, token, expires_at) of a scope, for operators and tests."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT holder, token, expires_at FROM lease WHERE scope = :scope"), {"scope": scope}
            ).first()
        return None if row is None else (str(row[0]), int(row[1]), float(row[2]))

    def verify(
        self, conn: Connection | Session | sqlite3.Cursor, scope: str, holder: str, token: int
    ) -> None:
        """Raises NotLeader unless (holder, token) still holds an unexpired lease on `scope`;
        run inside the transaction whose effect it guards (a SQLite cursor: the allocation's
        own transaction, keepers.store.allocate_sqlite)."""
        params = {"scope": scope, "holder": holder, "token": token}
        if isinstance(conn, sqlite3.Cursor):
            held = conn.execute(self._check.text, params).fetchone()
        else:
            held = conn.execute(self._check, params).first()
        if held is None:
            raise NotLeader(f"the lease on {scope} is no longer held with token {token}")


@dataclass(frozen=True)
class Fence:
    """What the nonce manager checks before it hands out a nonce: leases that must all still
    be held, with their tokens (one for a leader; one per shard an action touches)."""

    leases: LeaseStore
    holder: str
    terms: tuple[tuple[str, int], ...]  # (scope, token)

    @property
    def token(self) -> int | None:
        """The token recorded with the transaction: the leader's (None for a set of shards)."""
        return self.terms[0][1] if len(self.terms) == 1 else None

    def verify(self, conn: Connection | Session | sqlite3.Cursor) -> None:
        for scope, token in self.terms:
            self.leases.verify(conn, scope, self.holder, token)

"""Leader leases in the store, with fencing tokens.

A lease row names the holder of a scope (one keeper on one chain) and when its lease ends, by
the database's own clock, so replicas on hosts with skewed clocks agree. Acquiring and renewing
are one upsert; `token` rises every time the lease changes hands (or is taken again after it
lapsed). The token is the fence: the nonce manager checks it in the same database transaction
that hands out a nonce, so a leader that was paused past its lease and lost it cannot allocate,
sign or send anything once it wakes, whatever it still believes.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlmodel import Session

from keepers.store.engine import is_sqlite


class NotLeader(RuntimeError):
    """The fence refused: this process no longer holds the lease it acts under."""


def holder_id() -> str:
    """This process, unique across restarts: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


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
                row = conn.execute(self._acquire, {"scope": scope, "holder": holder, "ttl": ttl}).first()
                if row is not None:
                    granted[scope] = Term(int(row[0]), float(row[1]))
        return granted

    def release_many(self, scopes: list[str], holder: str) -> None:
        with self.engine.begin() as conn:
            for scope in scopes:
                conn.execute(self._release, {"scope": scope, "holder": holder})

    def live_holders(self, prefix: str) -> list[str]:
        """Holders of unexpired leases whose scope starts with `prefix` (membership)."""
        query = text(
            f"SELECT holder FROM lease WHERE scope LIKE :pattern AND expires_at > {self._now} ORDER BY holder"  # noqa: S608
        )
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(query, {"pattern": prefix + "%"})]

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

"""Engines for SQLite (default, one host) and PostgreSQL (several processes or hosts).

SQLite: WAL, and every transaction begins IMMEDIATE, so a writer takes the database lock at
BEGIN rather than failing at its first write; that makes one transaction the lock the nonce
manager needs. PostgreSQL: row locks (SELECT ... FOR UPDATE) do that job instead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

from keepers import jsonfast

#: First key of the PostgreSQL advisory locks that serialise writes of one chain's events.
_CHAIN_LOCK_NAMESPACE = 0x4B50


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url` (sqlite:///path or postgresql+psycopg://...), tuned per dialect."""
    kwargs.setdefault("json_serializer", jsonfast.dumps)
    kwargs.setdefault("json_deserializer", jsonfast.loads)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            # Pooled: opening a connection and setting its pragmas cost more than most of the
            # keeper's transactions. Our child processes are exec'd, never forked, so no pooled
            # connection is ever shared across processes.
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **kwargs)


def checkpoint_wal(engine: Engine) -> None:
    """Copies SQLite's write-ahead log into the database (PASSIVE: never waits on a reader or
    a writer); nothing to do on PostgreSQL."""
    if is_sqlite(engine):
        raw = engine.raw_connection()  # outside any transaction: SQLAlchemy would BEGIN first
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        finally:
            raw.close()


def lock_chain_writes(session: Session, chain_id: int) -> None:
    """Serialises, for this transaction, every process writing one chain's events, block hashes
    and projections (keeper kinds and replicas share a store). SQLite's BEGIN IMMEDIATE already
    makes each transaction the only writer; PostgreSQL takes a transaction-scoped advisory lock,
    without which two followers applying the same block both insert its rows."""
    if session.get_bind().dialect.name != "sqlite":
        lock = text("SELECT pg_advisory_xact_lock(:ns, :chain)")
        session.execute(lock, {"ns": _CHAIN_LOCK_NAMESPACE, "chain": chain_id})

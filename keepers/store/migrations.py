"""Schema migrations: an ordered list applied under a lock, so several keeper processes that
start together migrate once. (Alembic does not lock; our schema is one package's, so a short
list of Python steps is all we need.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, inspect, select, text
from sqlmodel import SQLModel

from keepers import __version__
from keepers.store import allocate_pg, tables
from keepers.store.engine import is_sqlite

_LOCK_KEY = 0x4B45455045  # arbitrary, fixed: the advisory lock id for migrations


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


def _ledger_and_reorg_marker(conn: Connection) -> None:
    """The action ledger table and order.reorged_block. A database made by version 1 of this
    package lacks both; one created since has them already (version 1 creates the current
    tables), so each step checks first."""
    tables.ActionLedger.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
    columns = {c["name"] for c in inspect(conn).get_columns("order")}
    if "reorged_block" not in columns:
        conn.execute(text('ALTER TABLE "order" ADD COLUMN reorged_block INTEGER'))


def _leases(conn: Connection) -> None:
    """Leader leases, the lease token each transaction was allocated under, and 64-bit order
    times (an order without expiry carries 2**32 - 1, past PostgreSQL's INTEGER; SQLite's
    integers are 64-bit already)."""
    tables.Lease.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
    columns = {c["name"] for c in inspect(conn).get_columns("txrecord")}
    if "fence_token" not in columns:
        conn.execute(text("ALTER TABLE txrecord ADD COLUMN fence_token BIGINT"))
    if conn.dialect.name == "postgresql":
        conn.execute(
            text('ALTER TABLE "order" ALTER COLUMN expiry TYPE BIGINT, ALTER COLUMN start TYPE BIGINT')
        )


def _order_delta_index(conn: Connection) -> None:
    """An index for the limit-stop keeper's per-block question, "which orders changed since
    block N": without it every block scanned the whole order table."""
    for index in tables.Order.__table__.indexes:  # type: ignore[attr-defined]
        if index.name == "ix_order_chain_updated":
            index.create(conn, checkfirst=True)


def _order_tolerance(conn: Connection) -> None:
    """Each order's fairness tolerance (the OrderBook bounds every fill by the oracle's rate)."""
    columns = {c["name"] for c in inspect(conn).get_columns("order")}
    if "tolerance_bps" not in columns:
        conn.execute(text('ALTER TABLE "order" ADD COLUMN tolerance_bps INTEGER NOT NULL DEFAULT 0'))


def _tx_fees(conn: Connection) -> None:
    """Each transaction record keeps the fees it is signed with (re-signed identically after a
    crash); the record state in_flight is gone (sent records are unconfirmed)."""
    columns = {c["name"] for c in inspect(conn).get_columns("txrecord")}
    for name in ("max_fee_per_gas", "max_priority_fee_per_gas"):
        if name not in columns:
            conn.execute(text(f"ALTER TABLE txrecord ADD COLUMN {name} BIGINT NOT NULL DEFAULT 0"))
    conn.execute(text("UPDATE txrecord SET state = 'unconfirmed' WHERE state = 'in_flight'"))


def _pg_allocate(conn: Connection) -> None:
    """Nonce allocation as one PostgreSQL function call (keepers.store.allocate_pg)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(allocate_pg.CREATE)


def _store_rollbacks(conn: Connection) -> None:
    """The log of rollbacks that keeps followers sharing a store in step (tables.StoreRollback)."""
    tables.StoreRollback.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _chain_scoped_indexes(conn: Connection) -> None:
    """Indexes that lead with chain_id for the per-block reads: with an index on block_number
    alone, SQLite answered "events of this chain in block N" from the primary key's chain_id
    prefix, a scan of every event of the chain (40 ms at 150,000 events, on every block)."""
    events: Table = tables.ChainEvent.__table__  # type: ignore[attr-defined]
    orders: Table = tables.Order.__table__  # type: ignore[attr-defined]
    for table, name in ((events, "ix_chainevent_chain_block"), (orders, "ix_order_chain_kind_status")):
        for index in table.indexes:
            if index.name == name:
                index.create(conn, checkfirst=True)
    conn.execute(text("DROP INDEX IF EXISTS ix_chainevent_block_number"))  # the new one covers it


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial),
    Migration(2, "action ledger, order reorg marker", _ledger_and_reorg_marker),
    Migration(3, "leader leases, fence token per transaction, 64-bit order times", _leases),
    Migration(4, "index of orders by chain and last updated block", _order_delta_index),
    Migration(5, "order fairness tolerance", _order_tolerance),
    Migration(6, "transaction fees on the record; no in_flight state", _tx_fees),
    Migration(7, "nonce allocation in one statement on PostgreSQL", _pg_allocate),
    Migration(8, "log of store rollbacks", _store_rollbacks),
    Migration(9, "events by chain and block, orders by chain, kind and status", _chain_scoped_indexes),
)


#: The schema version this package writes and reads.
LATEST = MIGRATIONS[-1].version


class SchemaError(RuntimeError):
    """The store's schema is not the one this package knows; the message says what to do."""


def _newer(done: set[int]) -> SchemaError | None:
    if max(done, default=0) <= LATEST:
        return None
    return SchemaError(
        f"the store's schema is at version {max(done)}, newer than this keepers {__version__} knows "
        f"({LATEST}): a newer release migrated it; run that release (or restore the database)"
    )


def _applied(conn: Connection) -> set[int]:
    if not inspect(conn).has_table("schemaversion"):
        return set()
    return set(conn.execute(select(tables.SchemaVersion.version)).scalars())  # type: ignore[call-overload]


def require_current(engine: Engine) -> None:
    """For read-only commands, which never migrate: raises SchemaError unless the store has
    exactly the schema this package knows."""
    with engine.connect() as conn:
        done = _applied(conn)
    if (newer := _newer(done)) is not None:
        raise newer
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    if missing:
        at = f"at version {max(done)}" if done else "empty (no schema)"
        raise SchemaError(
            f"the store is {at}, this keepers knows version {LATEST}: "
            f"run `keepers db migrate` (it applies {', '.join(map(str, missing))})"
        )


def migrate(engine: Engine) -> list[int]:
    """Applies what is missing; returns the versions applied now. Refuses (SchemaError) a store
    a newer release has migrated: this one would write rows that release does not expect."""
    applied_now: list[int] = []
    with engine.begin() as conn:
        if not is_sqlite(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        tables.SchemaVersion.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
        done = set(conn.execute(select(tables.SchemaVersion.version)).scalars())  # type: ignore[call-overload]
        if (newer := _newer(done)) is not None:
            raise newer
        for m in MIGRATIONS:
            if m.version in done:
                continue
            m.apply(conn)
            conn.execute(
                tables.SchemaVersion.__table__.insert().values(  # type: ignore[attr-defined]
                    version=m.version, description=m.description
                )
            )
            applied_now.append(m.version)
    return applied_now


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT max(version) FROM schemaversion")).scalar()
        return int(rows or 0)

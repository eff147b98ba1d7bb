"""The nonce allocation on SQLite, through the DBAPI connection: the statements are few and
cheap (~20 us each), and going through the ORM cost ten times that in Python while the
database's write lock was held, so every other process sharing the signer waited on it.

One transaction (BEGIN IMMEDIATE takes the write lock): the keys already allocated are left
alone, the fence's leases are checked, the lowest freed nonces then never-used ones are taken,
and the records and the actions' new ledger rows inserted. Values go through the columns' own
SQLAlchemy bind processors, so rows read back through the ORM are exactly what it would write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Dialect, Table

# Templates filled with placeholders only ("?, ?, ..."), never with values.
_KNOWN_RECORDS = "SELECT idempotency_key FROM txrecord WHERE idempotency_key IN ({})"
_KNOWN_LEDGER = "SELECT idempotency_key FROM actionledger WHERE idempotency_key IN ({})"
_TAKE_FREE = "DELETE FROM freenonce WHERE chain_id = ? AND signer = ? AND nonce IN ({})"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class Verifier(Protocol):
    def verify(self, conn: sqlite3.Cursor) -> None: ...


@dataclass(frozen=True)
class _Insert:
    sql: str
    columns: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def of(cls, table: Table, dialect: Dialect, columns: Sequence[str]) -> _Insert:
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        processors = tuple(table.c[c].type._cached_bind_processor(dialect) for c in columns)
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608 - our own column names
        return cls(sql, tuple(columns), processors)

    def row(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            v if p is None or v is None else p(v)
            for v, p in ((values.get(c), p) for c, p in zip(self.columns, self.processors, strict=True))
        )


class SqliteAllocator:
    """Allocation statements of one (chain, signer), prepared once per TxRecords."""

    def __init__(
        self,
        records: Table,
        columns: Sequence[str],
        ledger: Table,
        dialect: Dialect,
        chain_id: int,
        signer: str,
    ) -> None:
        self.key = (chain_id, signer)
        self.record = _Insert.of(records, dialect, columns)
        self.ledger = _Insert.of(ledger, dialect, [c.name for c in ledger.c if c.name != "id"])

    def allocate(
        self,
        conn: sqlite3.Connection,
        records: Sequence[dict[str, Any]],
        ledger: Sequence[dict[str, Any]],
        fence: Verifier | None,
    ) -> dict[str, tuple[int, int]]:
        """Inserts the records whose key is new, numbering them in order; returns key ->
        (id, nonce) of those inserted (keys already allocated are not in it)."""
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            out = self._allocate(cur, records, ledger, fence)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        return out

    def _allocate(
        self,
        cur: sqlite3.Cursor,
        records: Sequence[dict[str, Any]],
        ledger: Sequence[dict[str, Any]],
        fence: Verifier | None,
    ) -> dict[str, tuple[int, int]]:
        keys = [r["idempotency_key"] for r in records]
        known = {k for (k,) in cur.execute(_KNOWN_RECORDS.format(_marks(keys)), keys)}
        fresh = [r for r in records if r["idempotency_key"] not in known]
        if not fresh:
            return {}
        row = cur.execute(
            "SELECT next_nonce FROM noncecounter WHERE chain_id = ? AND signer = ?", self.key
        ).fetchone()
        if row is None:
            cur.execute("INSERT INTO noncecounter (chain_id, signer, next_nonce) VALUES (?, ?, 0)", self.key)
        next_nonce = 0 if row is None else int(row[0])
        if fence is not None:
            fence.verify(cur)
        free = [
            int(n)
            for (n,) in cur.execute(
                "SELECT nonce FROM freenonce WHERE chain_id = ? AND signer = ? ORDER BY nonce LIMIT ?",
                (*self.key, len(fresh)),
            )
        ]
        if free:
            cur.execute(_TAKE_FREE.format(_marks(free)), (*self.key, *free))
        count = len(fresh) - len(free)
        if count:
            cur.execute(
                "UPDATE noncecounter SET next_nonce = ? WHERE chain_id = ? AND signer = ?",
                (next_nonce + count, *self.key),
            )
        nonces = free + list(range(next_nonce, next_nonce + count))
        out: dict[str, tuple[int, int]] = {}
        for values, nonce in zip(fresh, nonces, strict=True):
            cur.execute(self.record.sql, self.record.row({**values, "nonce": nonce}))
            out[values["idempotency_key"]] = (int(cur.lastrowid or 0), nonce)
        if ledger:
            lkeys = [r["idempotency_key"] for r in ledger]
            have = {k for (k,) in cur.execute(_KNOWN_LEDGER.format(_marks(lkeys)), lkeys)}
            new = [self.ledger.row(r) for r in ledger if r["idempotency_key"] not in have]
            if new:
                cur.executemany(self.ledger.sql, new)
        return out

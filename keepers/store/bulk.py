"""Many-row INSERTs straight to the driver's executemany.

SQLAlchemy's executemany builds and type-processes a parameter set per row in Python (about
20 us a row here): more than SQLite takes to insert it. Here the statement is compiled once,
each column's bind processor (uint256 as text, JSON) is looked up once and applied in one
pass, and the rows go to the driver as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.orm import Session


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERTs `rows` (dicts with the same keys) into `table` in this session's transaction."""
    if not rows:
        return
    conn = session.connection()
    dialect = conn.dialect
    cols = list(rows[0])
    compiled = insert(table).values({c: bindparam(c) for c in cols}).compile(dialect=dialect)
    # Column by column: one lookup of each processor, and zip builds the row tuples in C.
    columns: list[list[Any]] = []
    for c in cols:
        values = [r[c] for r in rows]
        proc = table.c[c].type._cached_bind_processor(dialect)
        columns.append(values if proc is None else [None if v is None else proc(v) for v in values])
    if dialect.positional:
        names = list(compiled.positiontup or ())
        params: list[Any] = list(zip(*(columns[cols.index(n)] for n in names), strict=True))
    else:
        params = [dict(zip(cols, row, strict=True)) for row in zip(*columns, strict=True)]
    conn.exec_driver_sql(str(compiled), params)

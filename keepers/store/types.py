"""Column types for chain values that SQL integers cannot hold."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class Uint256(TypeDecorator[int]):
    """A uint256 stored as decimal text: exact on SQLite (whose integers stop at 2^63 and whose
    NUMERIC turns large values into floats) and on PostgreSQL alike."""

    impl = String(78)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> str | None:
        return None if value is None else str(int(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)

"""The action ledger (keeper economics) and what keepers learn about orders off-chain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from keepers.store.tables import ActionLedger, Order


@dataclass(frozen=True)
class PnlRow:
    chain_id: int
    keeper: str
    strategy: str
    day: dt.date
    actions: int
    included: int
    earned_wei: int
    spent_wei: int

    @property
    def net_wei(self) -> int:
        return self.earned_wei - self.spent_wei


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, entry: ActionLedger) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(entry)

    def mark_executable(self, chain_id: int, order_ids: Sequence[int], block: int) -> None:
        """The first block a keeper found these orders executable (kept if already set)."""
        if not order_ids:
            return
        with Session(self.engine) as session, session.begin():
            session.exec(
                update(Order)
                .where(
                    col(Order.chain_id) == chain_id,
                    col(Order.order_id).in_(list(order_ids)),
                    col(Order.executable_block).is_(None),
                )
                .values(executable_block=block)
            )

    def pnl(self, since: dt.date | None = None) -> list[PnlRow]:
        """Per chain, keeper, strategy and day. Summed in Python: amounts are uint256 stored as
        text, which SQL cannot add portably."""
        query = select(ActionLedger)
        if since is not None:
            query = query.where(col(ActionLedger.day) >= since)
        rows: dict[tuple[int, str, str, dt.date], list[int]] = {}
        with Session(self.engine) as session:
            for e in session.exec(query):
                acc = rows.setdefault((e.chain_id, e.keeper, e.strategy, e.day), [0, 0, 0, 0])
                acc[0] += 1
                acc[1] += e.status == "included"
                acc[2] += e.earned_wei
                acc[3] += e.gas_cost_wei + e.coinbase_wei
        return [PnlRow(*k, *v) for k, v in sorted(rows.items())]

"""Candidate sources: what each keeper kind considers at a block."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction
from typing import Any

import anyio
from sqlalchemy import Engine, Table
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from keepers.chain.follower import SyncResult
from keepers.engine.market import MarketSnapshot
from keepers.engine.trigger_index import TriggerIndex
from keepers.store.tables import Order, Position, Vault

_ORDERS: Table = Order.__table__  # type: ignore[attr-defined]

CandidateSource = Callable[[SyncResult, MarketSnapshot | None], Awaitable[Sequence[Any]]]
ORDER_KINDS = {"limit-stop": (0, 1, 2), "twap": (3,), "iceberg": (4,)}
OPEN = ("open", "armed", "partially_filled")


async def no_candidates(_result: SyncResult, _snap: MarketSnapshot | None) -> Sequence[Any]:
    return ()


def best_marginal_rate(snap: MarketSnapshot, token_in: str, token_out: str) -> Fraction | None:
    """The best rate a vanishing amount gets over any route (tokenOut raw per tokenIn raw, after fees)."""
    best: Fraction | None = None
    for path in snap.routes(token_in, token_out):
        rate, token = Fraction(1), token_in
        for pool in path:
            r_in, r_out = (
                (pool.reserve0, pool.reserve1) if token == pool.token0 else (pool.reserve1, pool.reserve0)
            )
            if r_in == 0:
                rate = Fraction(0)
                break
            rate *= Fraction(r_out, r_in) * Fraction(1_000_000 - pool.fee_pips, 1_000_000)
            token = pool.other(token)
        if best is None or rate > best:
            best = rate
    return best


class LimitStopCandidates:
    """Keeps the trigger index in step with the store (deltas by updated block; a full rebuild
    after a reorg) and returns the orders a block's prices cross.

    The index holds only what triggers need (a few integers an order); the full rows of the
    orders a block crosses are read from the store then, and kept until the order changes.
    Holding every open order as an ORM object cost ~3 KB each: over 300 MB at 100k orders.
    """

    #: Most full rows kept between blocks (orders crossed again and again, e.g. when the
    #: pools cannot fill them all at once).
    CACHE = 10_000

    def __init__(self, engine: Engine, chain_id: int) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.index = TriggerIndex()
        self.rows: dict[int, Order] = {}
        self.seen_block = -1

    def _changed(self, since: int) -> list[Any]:
        t = _ORDERS
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    core_select(
                        t.c.order_id, t.c.market, t.c.kind, t.c.min_amount_out, t.c.amount_in,
                        t.c.trigger_or_clip, t.c.status, t.c.remaining,
                    ).where(
                        t.c.chain_id == self.chain_id,
                        t.c.updated_block > since,
                        t.c.kind.in_(ORDER_KINDS["limit-stop"]),
                    )
                )
            )  # fmt: skip

    def refresh(self, result: SyncResult) -> None:
        if result.fork_block is not None:
            self.index, self.rows, self.seen_block = TriggerIndex(), {}, -1
        for o in self._changed(self.seen_block):
            self.rows.pop(o.order_id, None)
            if o.status in OPEN and o.remaining > 0:
                self.index.upsert(
                    o.order_id, o.market, o.kind, min_out=o.min_amount_out, amount_in=o.amount_in,
                    trigger=o.trigger_or_clip, armed=o.status == "armed",
                )  # fmt: skip
            else:
                self.index.remove(o.order_id)
        self.seen_block = result.head

    def _rows(self, ids: list[int]) -> list[Order]:
        missing = [i for i in ids if i not in self.rows]
        if missing:
            if len(self.rows) + len(missing) > self.CACHE:
                self.rows.clear()
            with Session(self.engine) as s:
                for part in range(0, len(missing), 900):
                    chunk = missing[part : part + 900]
                    for o in s.exec(
                        select(Order).where(Order.chain_id == self.chain_id, col(Order.order_id).in_(chunk))
                    ):
                        self.rows[o.order_id] = o
        return [self.rows[i] for i in ids if i in self.rows]

    def _crossed(self, result: SyncResult, snap: MarketSnapshot | None) -> list[Order]:
        self.refresh(result)
        if snap is None:
            return []
        ids: list[int] = []
        for market, (token_in, token_out) in snap.markets.items():
            ids += self.index.crossed(
                market, best_marginal_rate(snap, token_in, token_out), snap.oracle_rate(token_in, token_out)
            )
        return self._rows(ids)

    async def __call__(self, result: SyncResult, snap: MarketSnapshot | None) -> Sequence[Any]:
        return await anyio.to_thread.run_sync(self._crossed, result, snap)


def store_candidates(engine: Engine, chain_id: int, kind: str) -> CandidateSource:
    """Candidates straight from the store, for kinds whose sets are small per block."""

    def query() -> Sequence[Any]:
        with Session(engine) as s:
            if kind in ORDER_KINDS:
                return list(
                    s.exec(
                        select(Order).where(
                            Order.chain_id == chain_id,
                            col(Order.kind).in_(ORDER_KINDS[kind]),
                            col(Order.status).in_(OPEN),
                        )
                    ).all()
                )
            if kind == "liquidation":
                return list(s.exec(select(Position).where(Position.chain_id == chain_id)).all())
            if kind == "rebalancer":
                return list(s.exec(select(Vault).where(Vault.chain_id == chain_id)).all())
            return []

    async def source(_result: SyncResult, _snap: MarketSnapshot | None) -> Sequence[Any]:
        return await anyio.to_thread.run_sync(query)

    return source


def candidates_for(engine: Engine, chain_id: int, kind: str) -> CandidateSource:
    if kind == "limit-stop":
        return LimitStopCandidates(engine, chain_id)
    return store_candidates(engine, chain_id, kind)


def shard_key(candidate: Any) -> int:
    """What a candidate's shard is decided by: an order's market (the orders one batch fills
    through one shared swap stay with one replica), a borrower, a basket."""
    if isinstance(candidate, Order):
        return candidate.market
    if isinstance(candidate, Position):
        return int(candidate.borrower, 16)
    if isinstance(candidate, Vault):
        return candidate.basket_id
    raise TypeError(f"no shard key for {type(candidate).__name__}")

"""Candidate sources: what each keeper kind considers at a block."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import anyio
from sqlalchemy import Engine, Table
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from keepers.chain.block import Block
from keepers.engine.market import MarketSnapshot
from keepers.engine.trigger_index import TriggerIndex
from keepers.engine.views import OrderView, PositionView, VaultView
from keepers.store.tables import Order, Position, Vault

_ORDERS: Table = Order.__table__  # type: ignore[attr-defined]

CandidateSource = Callable[[Block, MarketSnapshot | None], Awaitable[Sequence[Any]]]
ORDER_KINDS = {"limit-stop": (0, 1, 2), "twap": (3,), "iceberg": (4,)}
OPEN = ("open", "armed", "partially_filled")


async def no_candidates(_result: Block, _snap: MarketSnapshot | None) -> Sequence[Any]:
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
    """Keeps the trigger index in step with the store and returns the orders a block's prices
    cross. The index follows the order rows each Block carries (what its events changed, as
    stored): nothing just written is read back. It reads the store instead at the start, after
    a reorg (rebuilt), when a Block carries too many rows (a catch-up), and when Blocks went by
    without it (a standby, a block whose market could not be read): a delta by updated block.
    The crossed orders' full rows come from the Block's rows, else from the store.

    The index holds only what triggers need (a few integers an order); the full rows of the
    orders a block crosses are read from the store then, and kept (as frozen `OrderView`s, what
    the strategy is given) until the order changes. Holding every open order as an ORM object
    cost ~3 KB each: over 300 MB at 100k orders.
    """

    #: Most full rows kept between blocks (orders crossed again and again, e.g. when the
    #: pools cannot fill them all at once).
    CACHE = 10_000

    def __init__(self, engine: Engine, chain_id: int) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.index = TriggerIndex()
        self.rows: dict[int, OrderView] = {}
        self.fresh: dict[int, dict[str, Any]] = {}
        self.seen_block = -1

    def _changed(self, since: int) -> list[Any]:
        t = _ORDERS
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    core_select(*(t.c[f] for f in _IndexRow._fields)).where(
                        t.c.chain_id == self.chain_id,
                        t.c.updated_block > since,
                        t.c.kind.in_(ORDER_KINDS["limit-stop"]),
                    )
                )
            )

    def refresh(self, block: Block) -> None:
        if block.fork_block is not None:
            self.index, self.rows, self.seen_block = TriggerIndex(), {}, -1
        # The Block's rows are enough when they cover everything since the last refresh.
        follows = self.seen_block >= 0 and block.previous == self.seen_block and block.orders is not None
        if follows and block.orders is not None:
            changed: list[Any] = [
                _IndexRow(**{k: row[k] for k in _IndexRow._fields})
                for row in block.orders.values()
                if row["kind"] in ORDER_KINDS["limit-stop"]
            ]
        else:
            changed = self._changed(self.seen_block)
        for o in changed:
            self.rows.pop(o.order_id, None)
            if o.status in OPEN and o.remaining > 0:
                self.index.upsert(
                    o.order_id, o.market, o.kind, min_out=o.min_amount_out, amount_in=o.amount_in,
                    trigger=o.trigger_or_clip, armed=o.status == "armed",
                )  # fmt: skip
            else:
                self.index.remove(o.order_id)
        # The crossed orders' full rows come from the Block's before the store (no read back).
        orders = block.orders if follows and block.orders is not None else {}
        self.fresh = {i: row for i, row in orders.items() if i in self.index}
        self.seen_block = block.number

    def _rows(self, ids: list[int]) -> list[OrderView]:
        for i in ids:
            if i not in self.rows and i in self.fresh:
                self.rows[i] = OrderView.from_mapping(self.fresh[i])
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
                        self.rows[o.order_id] = OrderView.of(o)
        return [self.rows[i] for i in ids if i in self.rows]

    def _crossed(self, block: Block, snap: MarketSnapshot | None) -> list[OrderView]:
        self.refresh(block)
        if snap is None:
            return []
        ids: list[int] = []
        for market, (token_in, token_out) in snap.markets.items():
            ids += self.index.crossed(
                market, best_marginal_rate(snap, token_in, token_out), snap.oracle_rate(token_in, token_out)
            )
        return self._rows(ids)

    async def __call__(self, block: Block, snap: MarketSnapshot | None) -> Sequence[Any]:
        return await anyio.to_thread.run_sync(self._crossed, block, snap)


class _IndexRow(NamedTuple):
    """An order row's fields the trigger index reads."""

    order_id: int
    market: int
    kind: int
    min_amount_out: int
    amount_in: int
    trigger_or_clip: int
    status: str
    remaining: int


def store_candidates(engine: Engine, chain_id: int, kind: str) -> CandidateSource:
    """Candidates straight from the store, for kinds whose sets are small per block (as the
    frozen views strategies are given, converted once each)."""

    def query() -> Sequence[Any]:
        with Session(engine) as s:
            if kind in ORDER_KINDS:
                return [
                    OrderView.of(o)
                    for o in s.exec(
                        select(Order).where(
                            Order.chain_id == chain_id,
                            col(Order.kind).in_(ORDER_KINDS[kind]),
                            col(Order.status).in_(OPEN),
                        )
                    )
                ]
            if kind == "liquidation":
                return [
                    PositionView.of(p) for p in s.exec(select(Position).where(Position.chain_id == chain_id))
                ]
            if kind == "rebalancer":
                return [VaultView.of(v) for v in s.exec(select(Vault).where(Vault.chain_id == chain_id))]
            return []

    async def source(_result: Block, _snap: MarketSnapshot | None) -> Sequence[Any]:
        return await anyio.to_thread.run_sync(query)

    return source


def candidates_for(engine: Engine, chain_id: int, kind: str) -> CandidateSource:
    if kind == "limit-stop":
        return LimitStopCandidates(engine, chain_id)
    return store_candidates(engine, chain_id, kind)


def shard_key(candidate: Any) -> int:
    """What a candidate's shard is decided by: an order's market (the orders one batch fills
    through one shared swap stay with one replica), a borrower, a basket."""
    if isinstance(candidate, OrderView | Order):
        return candidate.market
    if isinstance(candidate, PositionView | Position):
        return int(candidate.borrower, 16)
    if isinstance(candidate, VaultView | Vault):
        return candidate.basket_id
    raise TypeError(f"no shard key for {type(candidate).__name__}")

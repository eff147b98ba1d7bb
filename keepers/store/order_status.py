"""Where a trader's order stands, from the store: what the read-only API and
`keepers orders show` report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from keepers.store.tables import Fill, Order

KIND_NAMES = ("limit", "stop-loss", "take-profit", "twap", "iceberg")

#: An order id is a uint256 on chain: in decimal, at most 78 digits.
UINT256_DIGITS = 78


def parse_order_id(text: str) -> int | None:
    """`text` as an order id (a uint256 in plain ASCII decimal), else None. Stricter than int(),
    which takes signs, spaces, underscores and any Unicode digit (and "²" passes isdigit() but not
    int()), and reads a 5,000-digit string only to raise."""
    if not (0 < len(text) <= UINT256_DIGITS and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value < 2**256 else None


def _storable(engine: Engine, order_id: int) -> bool:
    """Whether the store's order_id column (INTEGER: 64-bit on SQLite, 32-bit on PostgreSQL) can
    hold `order_id`. No order past it can be stored, and binding one raises (SQLite's driver:
    OverflowError; PostgreSQL: integer out of range) where the answer is simply "not found"."""
    limit = 2**63 if engine.dialect.name == "sqlite" else 2**31
    return 0 <= order_id < limit


@dataclass(frozen=True)
class FillView:
    tx_hash: str
    block: int
    amount_in: int
    amount_out: int
    #: Output per input in the tokens' smallest units (amount_out / amount_in).
    price_raw: float
    keeper_fee: int
    keeper: str


@dataclass(frozen=True)
class OrderView:
    chain_id: int
    order_id: int
    owner: str
    #: The OrderBook market (its tokenIn -> tokenOut pair).
    market: int
    kind: str
    #: open, armed, partially_filled, filled, cancelled, expired, or reorged (a reorg took its
    #: fill off the chain and it is open again).
    status: str
    amount_in: int
    remaining: int
    min_amount_out: int
    keeper_fee_bps: int
    placed_block: int
    executable_block: int | None
    filled_block: int | None
    latency_blocks: int | None  # first fill block minus executable block (1 = the next block)
    reorged_block: int | None
    fills: list[FillView] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("amount_in", "remaining", "min_amount_out"):
            out[k] = str(out[k])  # uint256: JSON numbers lose precision past 2^53
        for f in out["fills"]:
            for k in ("amount_in", "amount_out", "keeper_fee"):
                f[k] = str(f[k])
        return out


def _view(order: Order, fills: list[Fill]) -> OrderView:
    status = order.status
    if order.reorged_block is not None and status in ("open", "armed"):
        status = "reorged"
    filled_block = max((f.block_number for f in fills), default=None) if status == "filled" else None
    first_fill = min((f.block_number for f in fills), default=None)
    latency = (
        first_fill - order.executable_block
        if first_fill is not None and order.executable_block is not None
        else None
    )
    return OrderView(
        chain_id=order.chain_id,
        order_id=order.order_id,
        owner=order.owner,
        market=order.market,
        kind=KIND_NAMES[order.kind] if 0 <= order.kind < len(KIND_NAMES) else str(order.kind),
        status=status,
        amount_in=order.amount_in,
        remaining=order.remaining,
        min_amount_out=order.min_amount_out,
        keeper_fee_bps=order.keeper_fee_bps,
        placed_block=order.placed_block,
        executable_block=order.executable_block,
        filled_block=filled_block,
        latency_blocks=latency,
        reorged_block=order.reorged_block,
        fills=[
            FillView(
                tx_hash=f.tx_hash,
                block=f.block_number,
                amount_in=f.amount_in,
                amount_out=f.amount_out,
                price_raw=f.amount_out / f.amount_in if f.amount_in else 0.0,
                keeper_fee=f.keeper_fee,
                keeper=f.keeper,
            )
            for f in fills
        ],
    )


def _fills(session: Session, chain_id: int, order_id: int) -> list[Fill]:
    return list(
        session.exec(
            select(Fill)
            .where(Fill.chain_id == chain_id, Fill.order_id == order_id)
            .order_by(col(Fill.block_number), col(Fill.log_index))
        ).all()
    )


def order_status(engine: Engine, chain_id: int, order_id: int) -> OrderView | None:
    if not _storable(engine, order_id):
        return None
    with Session(engine) as session:
        order = session.get(Order, (chain_id, order_id))
        if order is None:
            return None
        return _view(order, _fills(session, chain_id, order_id))


def orders_of(
    engine: Engine, chain_id: int, owner: str, limit: int = 100, before: int | None = None
) -> list[OrderView]:
    """An owner's orders, newest (highest id) first: at most `limit`, and only ids below
    `before` when given (the cursor of the next page: a stable order, whatever is placed)."""
    query = select(Order).where(Order.chain_id == chain_id, Order.owner == owner.lower())
    if before is not None and _storable(engine, before):  # else every stored id is below it
        query = query.where(col(Order.order_id) < before)
    with Session(engine) as session:
        orders = session.exec(query.order_by(col(Order.order_id).desc()).limit(limit)).all()
        fills: dict[int, list[Fill]] = {o.order_id: [] for o in orders}
        if fills:  # one query for the page's fills, not one per order
            for f in session.exec(
                select(Fill)
                .where(Fill.chain_id == chain_id, col(Fill.order_id).in_(list(fills)))
                .order_by(col(Fill.block_number), col(Fill.log_index))
            ).all():
                fills[f.order_id].append(f)
        return [_view(o, fills[o.order_id]) for o in orders]

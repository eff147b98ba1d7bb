"""The limit/stop trigger index follows the store from the rows each Block carries, and falls
back to the store when it missed Blocks (a standby, a block whose market read failed): after
every refresh it holds exactly the store's open orders, whatever was delivered."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, select

from keepers.chain.block import Block
from keepers.chain.events import Event
from keepers.engine.candidates import OPEN, LimitStopCandidates
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.projection import store_events
from keepers.store.tables import Order

BOOK = "0x00000000000000000000000000000000000000b0"


def _ev(block: int, name: str, args: dict[str, Any]) -> Event:
    return Event(block, f"0xb{block}", f"0x{block:064x}", 0, BOOK, "OrderBook", name, args)


def _event(block: int, op: str, order_id: int) -> Event:
    if op == "place":
        params = {"kind": order_id % 3, "amountIn": 10**18, "minAmountOut": 1_900 * 10**6, "expiry": 0,
                  "keeperFeeBps": 10, "triggerOrClip": 10**18 * order_id, "start": 0, "interval": 0,
                  "slices": 0, "toleranceBps": 0}  # fmt: skip
        return _ev(
            block, "OrderPlaced", {"id": order_id, "owner": "0x" + "aa" * 20, "market": 1, "params": params}
        )
    if op == "cancel":
        return _ev(block, "OrderCancelled", {"id": order_id})
    if op == "arm":
        return _ev(block, "OrderArmed", {"id": order_id})
    remaining = 0 if op == "fill" else 10**17
    args = {"id": order_id, "keeper": "0x" + "cc" * 20, "amountIn": 10**18 - remaining, "amountOut": 1,
            "keeperFee": 0, "remaining": remaining}  # fmt: skip
    return _ev(block, "OrderFilled", args)


def _open(engine: Any) -> set[int]:
    with Session(engine) as s:
        rows = s.exec(select(Order.order_id).where(col(Order.status).in_(OPEN), Order.remaining > 0))
        return set(rows.all())


steps = st.lists(
    st.tuples(
        st.sampled_from(["place", "place", "fill", "partial", "cancel", "arm"]),
        st.integers(0, 7),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_the_index_equals_the_stores_open_orders_after_every_refresh(tmp_path_factory, steps):
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('idx') / 's.sqlite'}")
    migrate(engine)
    candidates = LimitStopCandidates(engine, 1)
    placed: list[int] = []
    returned = -1
    for i, (op, pick, delivered) in enumerate(steps):
        block = 10 + i
        if op == "place" or not placed:
            order_id = len(placed) + 1
            placed.append(order_id)
            op = "place"
        else:
            order_id = placed[pick % len(placed)]
        with Session(engine) as s, s.begin():
            stored = store_events(s, 1, [_event(block, op, order_id)])
        b = Block(block, f"0x{block:064x}", 1_000 + block, returned, stored.new, None, 0, stored.orders)
        returned = block
        if delivered:  # else the keeper missed this Block
            candidates.refresh(b)
            held = {o for o in placed if o in candidates.index}
            assert held == _open(engine), f"after block {block} ({op} {order_id})"
            for o in held & set(stored.orders):
                assert candidates._rows([o])[0].remaining == stored.orders[o]["remaining"]

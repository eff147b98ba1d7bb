"""Order status and the action ledger on a real SQLite store, events folded by the projection."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session, select

from keepers.chain.events import Event
from keepers.store.engine import make_engine
from keepers.store.ledger import Ledger
from keepers.store.migrations import migrate
from keepers.store.order_status import order_status
from keepers.store.projection import rollback_after, rollbacks_since, store_events
from keepers.store.tables import ActionLedger, BlockHash, Cursor, StoreRollback

BOOK = "0x00000000000000000000000000000000000000b0"
OWNER = "0x00000000000000000000000000000000000000aa"


def _ev(block: int, name: str, args: dict[str, Any], log_index: int = 0) -> Event:
    return Event(block, f"0xb{block}", f"0x{block:064x}", log_index, BOOK, "OrderBook", name, args)


def _placed(order_id: int, block: int) -> Event:
    params = {
        "kind": 0, "amountIn": 10**18, "minAmountOut": 1_900 * 10**6, "expiry": 0, "keeperFeeBps": 10,
        "triggerOrClip": 0, "start": 0, "interval": 0, "slices": 0, "toleranceBps": 0,
    }  # fmt: skip
    return _ev(block, "OrderPlaced", {"id": order_id, "owner": OWNER, "market": 1, "params": params})


def _filled(order_id: int, block: int, remaining: int = 0) -> Event:
    args = {"id": order_id, "keeper": "0x" + "cc" * 20, "amountIn": 10**18 - remaining,
            "amountOut": 2_000 * 10**6, "keeperFee": 2 * 10**6, "remaining": remaining}  # fmt: skip
    return _ev(block, "OrderFilled", args, log_index=1)


def _engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    migrate(engine)
    return engine


def test_filled_order_reports_executable_and_fill_blocks(tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as s, s.begin():
        store_events(s, 1, [_placed(7, 10)])
    assert order_status(engine, 1, 7).status == "open"  # type: ignore[union-attr]
    Ledger(engine).mark_executable(1, [7], 14)
    Ledger(engine).mark_executable(1, [7], 15)  # a later sighting does not move it
    with Session(engine) as s, s.begin():
        store_events(s, 1, [_filled(7, 15)])
    view = order_status(engine, 1, 7)
    assert view is not None
    assert (view.status, view.executable_block, view.filled_block, view.latency_blocks) == (
        "filled",
        14,
        15,
        1,
    )
    assert view.fills[0].price_raw == 2_000 * 10**6 / 10**18
    assert view.as_json()["amount_in"] == str(10**18), "uint256 as a string in JSON"
    assert order_status(engine, 1, 8) is None


def test_a_reorged_fill_puts_the_order_back_and_says_so(tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as s, s.begin():
        store_events(s, 1, [_placed(7, 10), _filled(7, 15, remaining=4 * 10**17)])
    Ledger(engine).mark_executable(1, [7], 14)
    assert order_status(engine, 1, 7).status == "partially_filled"  # type: ignore[union-attr]
    with Session(engine) as s, s.begin():
        rollback_after(s, 1, 14, {BOOK: "OrderBook"})
    view = order_status(engine, 1, 7)
    assert view is not None
    assert (view.status, view.reorged_block, view.fills) == ("reorged", 15, [])
    assert view.remaining == 10**18
    assert view.executable_block == 14, "what the keeper learned survives the re-fold"
    with Session(engine) as s, s.begin():
        store_events(s, 1, [_filled(7, 16)])  # filled again on the new branch
    view = order_status(engine, 1, 7)
    assert view is not None
    assert (view.status, view.filled_block, view.reorged_block) == ("filled", 16, 15)


def test_pnl_by_keeper_strategy_and_day(tmp_path):
    engine = _engine(tmp_path)
    ledger = Ledger(engine)
    today = dt.date.today()
    for status, earned, gas in (("included", 5 * 10**15, 10**15), ("included", 3 * 10**15, 10**15),
                                ("missed", 0, 0)):  # fmt: skip
        ledger.record(
            ActionLedger(
                chain_id=1,
                keeper="limit-stop",
                strategy="best-execution",
                idempotency_key=status,
                decided_block=1,
                status=status,
                earned_wei=earned,
                gas_cost_wei=gas,
                coinbase_wei=10**14 if earned else 0,
                day=today,
            )
        )
    ledger.record(
        ActionLedger(
            chain_id=1,
            keeper="oracle",
            strategy="median",
            idempotency_key="o",
            decided_block=1,
            status="included",
            earned_wei=0,
            gas_cost_wei=7 * 10**14,
            day=today,
        )
    )
    rows = {(r.keeper, r.strategy): r for r in ledger.pnl(today)}
    ls = rows[("limit-stop", "best-execution")]
    assert (ls.actions, ls.included) == (3, 2)
    assert ls.earned_wei == 8 * 10**15
    assert ls.spent_wei == 2 * 10**15 + 2 * 10**14
    assert ls.net_wei == 8 * 10**15 - 22 * 10**14
    assert rows[("oracle", "median")].net_wei == -7 * 10**14, "public-good work shows its cost"
    assert ledger.pnl(today + dt.timedelta(days=1)) == []


def test_a_rollback_is_logged_moves_cursors_above_it_back_and_the_log_stays_short(tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as s, s.begin():
        s.add(BlockHash(chain_id=1, number=14, hash="0x14", parent_hash="0x13"))
        s.add(Cursor(chain_id=1, name="ahead", block_number=20, block_hash="0x20"))
        s.add(Cursor(chain_id=1, name="behind", block_number=12, block_hash="0x12"))
        s.add(Cursor(chain_id=2, name="ahead", block_number=20, block_hash="0x20"))
    with Session(engine) as s, s.begin():
        first = rollback_after(s, 1, 14, {BOOK: "OrderBook"}).rollback_id
    with Session(engine) as s:
        cursors = {(c.chain_id, c.name): (c.block_number, c.block_hash) for c in s.exec(select(Cursor))}
        assert rollbacks_since(s, 1, 0) == (first, 14)
        assert rollbacks_since(s, 1, first) == (first, None)
        assert rollbacks_since(s, 2, 0) == (0, None)
    assert cursors == {(1, "ahead"): (14, "0x14"), (1, "behind"): (12, "0x12"), (2, "ahead"): (20, "0x20")}
    for _ in range(1_005):
        with Session(engine) as s, s.begin():
            rollback_after(s, 1, 14, {BOOK: "OrderBook"})
    with Session(engine) as s, s.begin():
        rollback_after(s, 2, 3, {})
    with Session(engine) as s:
        kept = s.exec(select(StoreRollback.chain_id)).all()
    assert (kept.count(1), kept.count(2)) == (1_000, 1), "the newest 1,000 of each chain"

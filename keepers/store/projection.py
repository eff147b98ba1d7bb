"""Chain events -> orders, fills, positions and vaults. The rows are a fold over the events, so a
reorg rolls back by deleting the orphaned events and re-folding what they touched.

A batch of events is folded in memory: the rows it touches are read in one query per table,
changed in dicts and written back with one executemany per table and column set. Catch-up
applies pages of thousands of events; a statement per event (the ORM's way) made the store the
slowest part of following the chain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, update
from sqlmodel import Session

from keepers.store.bulk import insert_rows
from keepers.store.tables import BlockHash, ChainEvent, Cursor, Fill, Order, Position, StoreRollback, Vault

#: Projection keys an event touches: ("order", id) / ("position", market, borrower) / ("vault", addr, id).
Key = tuple[Any, ...]

ORDERS: Table = Order.__table__  # type: ignore[attr-defined]
FILLS: Table = Fill.__table__  # type: ignore[attr-defined]
POSITIONS: Table = Position.__table__  # type: ignore[attr-defined]
VAULTS: Table = Vault.__table__  # type: ignore[attr-defined]
EVENTS: Table = ChainEvent.__table__  # type: ignore[attr-defined]
HASHES: Table = BlockHash.__table__  # type: ignore[attr-defined]
CURSORS: Table = Cursor.__table__  # type: ignore[attr-defined]
ROLLBACKS: Table = StoreRollback.__table__  # type: ignore[attr-defined]

#: Bound parameters per IN list: under SQLite's oldest limit (999) with room for the chain id.
CHUNK = 900

_ORDER_END = ("OrderArmed", "OrderFilled", "OrderCancelled", "OrderExpired")
_MARKET = (
    "CollateralDeposited", "CollateralWithdrawn", "Borrowed", "Repaid", "Liquidated", "BadDebtWrittenOff",
)  # fmt: skip


class EventLike(Protocol):
    """What the fold reads of an event: a decoded `Event` and a stored `ChainEvent` both have it."""

    @property
    def block_number(self) -> int: ...
    @property
    def tx_hash(self) -> str: ...
    @property
    def log_index(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def args(self) -> dict[str, Any]: ...


def key_of(contract: str, address: str, name: str, args: dict[str, Any]) -> Key | None:
    if contract == "OrderBook" and "id" in args and name.startswith("Order"):
        return ("order", int(args["id"]))
    if contract == "LendingMarket" and "borrower" in args:
        return ("position", address.lower(), str(args["borrower"]).lower())
    if contract == "RebalancingVault" and "id" in args and name in ("BasketCreated", "TargetsSet"):
        return ("vault", address.lower(), int(args["id"]))
    return None


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


class _Rows:
    """One table's rows touched by a batch: loaded once, changed in memory, written once."""

    def __init__(self, table: Table, pk: tuple[str, ...]) -> None:
        self.table = table
        self.pk = pk
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.stored: set[tuple[Any, ...]] = set()
        self.changed: dict[tuple[Any, ...], set[str]] = defaultdict(set)
        self._columns = frozenset(c.name for c in table.columns) - set(pk)

    def load(self, session: Session, keys: set[tuple[Any, ...]]) -> None:
        # Keys share their leading columns (one chain, one market): `lead = … AND last IN (…)`
        # walks the primary key; a row-value IN over whole keys took SQLite 4x longer.
        by_lead: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
        for k in sorted(k for k in keys if k not in self.rows):
            by_lead[k[:-1]].append(k[-1])
        *lead, last = (self.table.c[c] for c in self.pk)
        for prefix, lasts in by_lead.items():
            match = [c == v for c, v in zip(lead, prefix, strict=True)]
            for part in _chunks(lasts):
                for row in session.execute(select(self.table).where(*match, last.in_(part))).mappings():
                    k = tuple(row[c] for c in self.pk)
                    self.rows[k] = dict(row)
                    self.stored.add(k)

    def get(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        return self.rows.get(key)

    def put(self, key: tuple[Any, ...], row: dict[str, Any]) -> None:
        """A whole new row (merge semantics: it replaces a stored one)."""
        self.rows[key] = row
        self.changed[key] = set(self._columns)

    def set(self, key: tuple[Any, ...], **values: Any) -> None:
        self.rows[key].update(values)
        self.changed[key].update(values)

    def write(self, session: Session) -> None:
        insert_rows(session, self.table, [self.rows[k] for k in self.changed if k not in self.stored])
        # An UPDATE names only the columns the fold changed: a keeper marking an order
        # executable meanwhile keeps its mark.
        groups: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
        for k, changed in self.changed.items():
            if k in self.stored and changed:
                row = self.rows[k]
                groups[frozenset(changed)].append(
                    {**{f"k_{c}": row[c] for c in self.pk}, **{f"v_{c}": row[c] for c in changed}}
                )
        for cols, params in groups.items():
            where = and_(*(self.table.c[c] == bindparam(f"k_{c}") for c in self.pk))
            stmt = update(self.table).where(where).values({c: bindparam(f"v_{c}") for c in sorted(cols)})
            session.connection().execute(stmt, params)
        self.stored.update(self.changed)
        self.changed.clear()


class Fold:
    """Folds events, in order, over the projection rows of one chain."""

    def __init__(self, session: Session, chain_id: int) -> None:
        self.session = session
        self.chain_id = chain_id
        self.orders = _Rows(ORDERS, ("chain_id", "order_id"))
        self.positions = _Rows(POSITIONS, ("chain_id", "market", "borrower"))
        self.vaults = _Rows(VAULTS, ("chain_id", "vault", "basket_id"))
        self.fills: list[dict[str, Any]] = []

    def load(self, events: Iterable[EventLike]) -> None:
        orders, positions, vaults = set(), set(), set()
        placed: set[int] = set()
        for ev in events:
            a = ev.args
            if ev.name == "OrderPlaced":
                # An order id is placed once on a chain (a reorg's re-fold deletes the row
                # first): a new order has no row to load.
                placed.add(int(a["id"]))
            elif _is_order_event(ev) and int(a["id"]) not in placed:
                orders.add((self.chain_id, int(a["id"])))
            elif ev.name in _MARKET:
                positions.add((self.chain_id, ev.address.lower(), str(a["borrower"]).lower()))
            elif ev.name in ("BasketCreated", "TargetsSet"):
                vaults.add((self.chain_id, ev.address.lower(), int(a["id"])))
        self.orders.load(self.session, orders)
        self.positions.load(self.session, positions)
        self.vaults.load(self.session, vaults)

    def run(self, events: Sequence[EventLike]) -> Fold:
        """Loads what `events` touch and folds them, in order; `write` stores the result."""
        self.load(events)
        for ev in events:
            self.apply(ev)
        return self

    def apply(self, ev: EventLike) -> None:
        """Folds one event; `load` must have seen it."""
        a = ev.args
        if ev.name == "OrderPlaced":
            p = a["params"]
            self.orders.put(
                (self.chain_id, int(a["id"])),
                {
                    "chain_id": self.chain_id,
                    "order_id": int(a["id"]),
                    "book": ev.address.lower(),
                    "owner": str(a["owner"]).lower(),
                    "market": int(a["market"]),
                    "kind": int(p["kind"]),
                    "amount_in": int(p["amountIn"]),
                    "min_amount_out": int(p["minAmountOut"]),
                    "remaining": int(p["amountIn"]),
                    "expiry": int(p["expiry"]) or 2**32 - 1,
                    "keeper_fee_bps": int(p["keeperFeeBps"]),
                    "trigger_or_clip": int(p["triggerOrClip"]),
                    "start": int(p["start"]),
                    "interval": int(p["interval"]),
                    "slices": int(p["slices"]),
                    "tolerance_bps": int(p["toleranceBps"]),
                    "status": "open",
                    "placed_block": ev.block_number,
                    "executable_block": None,
                    "updated_block": ev.block_number,
                    "reorged_block": None,
                },
            )
        elif ev.name in _ORDER_END:
            self._order_event(ev)
        elif ev.name in _MARKET:
            self._position_event(ev)
        elif ev.name == "BasketCreated":
            self.vaults.put(
                (self.chain_id, ev.address.lower(), int(a["id"])),
                {
                    "chain_id": self.chain_id,
                    "vault": ev.address.lower(),
                    "basket_id": int(a["id"]),
                    "owner": str(a["owner"]).lower(),
                    "tokens": [str(t).lower() for t in a["tokens"]],
                    "weights_bps": [int(w) for w in a["weightsBps"]],
                    "drift_threshold_bps": int(a["driftThresholdBps"]),
                    "max_slippage_bps": int(a["maxSlippageBps"]),
                    "reward_bps": int(a["rewardBps"]),
                    "updated_block": ev.block_number,
                },
            )
        elif ev.name == "TargetsSet":
            key = (self.chain_id, ev.address.lower(), int(a["id"]))
            if self.vaults.get(key) is not None:
                weights = [int(w) for w in a["weightsBps"]]
                self.vaults.set(key, weights_bps=weights, updated_block=ev.block_number)

    def _order_event(self, ev: EventLike) -> None:
        a = ev.args
        key = (self.chain_id, int(a["id"]))
        order = self.orders.get(key)
        if order is None:
            return  # placed before the follower's start block
        if ev.name == "OrderArmed":
            self.orders.set(
                key, status="armed", executable_block=order["executable_block"] or ev.block_number
            )
        elif ev.name == "OrderFilled":
            self.fills.append(
                {
                    "chain_id": self.chain_id,
                    "tx_hash": ev.tx_hash,
                    "log_index": ev.log_index,
                    "order_id": key[1],
                    "keeper": str(a["keeper"]).lower(),
                    "amount_in": int(a["amountIn"]),
                    "amount_out": int(a["amountOut"]),
                    "keeper_fee": int(a["keeperFee"]),
                    "block_number": ev.block_number,
                }
            )
            remaining = int(a["remaining"])
            status = "filled" if remaining == 0 else "partially_filled"
            self.orders.set(key, remaining=remaining, status=status)
        else:
            status = "cancelled" if ev.name == "OrderCancelled" else "expired"
            self.orders.set(key, remaining=0, status=status)
        self.orders.set(key, updated_block=ev.block_number)

    def _position_event(self, ev: EventLike) -> None:
        a = ev.args
        key = (self.chain_id, ev.address.lower(), str(a["borrower"]).lower())
        pos = self.positions.get(key)
        if pos is None:
            pos = {"chain_id": key[0], "market": key[1], "borrower": key[2], "collateral": 0, "borrowed": 0,
                   "repaid": 0, "updated_block": ev.block_number}  # fmt: skip
            self.positions.put(key, pos)
        collateral, borrowed, repaid = pos["collateral"], pos["borrowed"], pos["repaid"]
        if ev.name == "CollateralDeposited":
            collateral += int(a["amount"])
        elif ev.name == "CollateralWithdrawn":
            collateral -= int(a["amount"])
        elif ev.name == "Borrowed":
            borrowed += int(a["amount"])
        elif ev.name in ("Repaid", "BadDebtWrittenOff"):
            repaid += int(a["amount"])
        elif ev.name == "Liquidated":
            repaid += int(a["repaid"])
            collateral -= int(a["collateralSeized"])
        self.positions.set(
            key, collateral=collateral, borrowed=borrowed, repaid=repaid, updated_block=ev.block_number
        )

    def write(self) -> None:
        self.orders.write(self.session)
        self.positions.write(self.session)
        self.vaults.write(self.session)
        insert_rows(self.session, FILLS, self.fills)
        self.fills = []


@dataclass(frozen=True)
class Stored:
    """What a batch of events did to the store: how many were new, and the order rows they
    changed, as written (order id -> row): a keeper's in-memory indexes follow the store from
    these without reading back what was just written."""

    new: int
    orders: dict[int, dict[str, Any]]


def store_events(session: Session, chain_id: int, events: Iterable[EventLike]) -> Stored:
    """Inserts new events and folds them; events already stored are skipped (another process
    on the same store may have stored them: the order rows they touch are read instead)."""
    batch = list(events)
    if not batch:
        return Stored(0, {})
    session.flush()
    lo = min(e.block_number for e in batch)
    hi = max(e.block_number for e in batch)
    stored = {
        (r.tx_hash, r.log_index)
        for r in session.execute(
            select(EVENTS.c.tx_hash, EVENTS.c.log_index).where(
                EVENTS.c.chain_id == chain_id, EVENTS.c.block_number.between(lo, hi)
            )
        )
    }
    new: list[EventLike] = []
    for e in batch:
        if (e.tx_hash, e.log_index) not in stored:
            stored.add((e.tx_hash, e.log_index))
            new.append(e)
    orders: dict[int, dict[str, Any]] = {}
    if new:
        insert_rows(
            session,
            EVENTS,
            [
                {
                    "chain_id": chain_id,
                    "tx_hash": e.tx_hash,
                    "log_index": e.log_index,
                    "block_number": e.block_number,
                    "block_hash": e.block_hash,  # type: ignore[attr-defined]
                    "address": e.address.lower(),
                    "name": e.name,
                    "args": e.args,
                }
                for e in new
            ],
        )
        fold = Fold(session, chain_id).run(new)
        orders = {key[1]: dict(fold.orders.rows[key]) for key in fold.orders.changed}
        fold.write()
    others = sorted({int(e.args["id"]) for e in batch if _is_order_event(e)} - orders.keys())
    for part in _chunks(others):
        for row in session.execute(
            select(ORDERS).where(ORDERS.c.chain_id == chain_id, ORDERS.c.order_id.in_(part))
        ).mappings():
            orders[row["order_id"]] = dict(row)
    return Stored(len(new), orders)


def _is_order_event(ev: EventLike) -> bool:
    return ev.name.startswith("Order") and "id" in ev.args


@dataclass(frozen=True)
class RolledBack:
    removed: int  # events removed
    rollback_id: int  # its entry in the log of rollbacks (StoreRollback)


def rollback_after(session: Session, chain_id: int, fork_block: int, contracts: dict[str, str]) -> RolledBack:
    """Removes everything above `fork_block` and re-folds what it touched. The store is shared
    by followers at different blocks: the rollback is logged and every cursor above the fork
    is moved back to it, so no follower (running, or restarted later) stores a block on top of
    blocks this removed; each reads the new branch from the fork."""
    session.flush()
    orphans = session.execute(
        select(EVENTS).where(EVENTS.c.chain_id == chain_id, EVENTS.c.block_number > fork_block)
    ).all()
    touched: set[Key] = set()
    unfilled: set[int] = set()  # orders a reorg took a fill from
    for ev in orphans:
        k = key_of(contracts.get(ev.address.lower(), ""), *_keyed(ev))
        if k:
            touched.add(k)
            if ev.name == "OrderFilled":
                unfilled.add(int(k[1]))
    session.execute(delete(EVENTS).where(EVENTS.c.chain_id == chain_id, EVENTS.c.block_number > fork_block))
    kept = session.execute(
        select(HASHES.c.hash).where(HASHES.c.chain_id == chain_id, HASHES.c.number == fork_block)
    ).scalar()
    session.execute(delete(HASHES).where(HASHES.c.chain_id == chain_id, HASHES.c.number > fork_block))
    if touched:
        _refold(session, chain_id, touched, contracts)
    for part in _chunks(sorted(unfilled)):
        session.execute(
            update(ORDERS)
            .where(ORDERS.c.chain_id == chain_id, ORDERS.c.order_id.in_(part))
            .values(reorged_block=fork_block + 1)
        )
    session.execute(
        update(CURSORS)
        .where(CURSORS.c.chain_id == chain_id, CURSORS.c.block_number > fork_block)
        .values(block_number=fork_block, block_hash=kept or "")
    )
    rollback_id = session.execute(
        insert(ROLLBACKS).values(chain_id=chain_id, fork_block=fork_block).returning(ROLLBACKS.c.id)
    ).scalar_one()
    # Followers read the log only past their last look: the chain's newest 1,000 are plenty.
    of_chain = ROLLBACKS.c.chain_id == chain_id
    beyond = select(ROLLBACKS.c.id).where(of_chain).order_by(ROLLBACKS.c.id.desc()).offset(1000).limit(1)
    session.execute(delete(ROLLBACKS).where(of_chain, ROLLBACKS.c.id <= beyond.scalar_subquery()))
    session.expire_all()  # the ORM's view of these rows is stale now
    return RolledBack(len(orphans), rollback_id)


def rollbacks_since(session: Session, chain_id: int, after: int) -> tuple[int, int | None]:
    """The newest rollback id of the chain's log (`after` if none is newer) and the lowest
    fork block of those after `after` (None if none)."""
    newest, lowest = session.execute(
        select(func.max(ROLLBACKS.c.id), func.min(ROLLBACKS.c.fork_block)).where(
            ROLLBACKS.c.chain_id == chain_id, ROLLBACKS.c.id > after
        )
    ).one()
    return (after if newest is None else int(newest)), (None if lowest is None else int(lowest))


def _refold(session: Session, chain_id: int, touched: set[Key], contracts: dict[str, str]) -> None:
    """Deletes the touched rows and folds the surviving events of their keys again."""
    order_ids = sorted(k[1] for k in touched if k[0] == "order")
    # An order's events start at its placement: scan only from the earliest touched one.
    # Positions and vaults have no such start.
    since: int | None = 0 if len(order_ids) < len(touched) else None
    kept: dict[int, Any] = {}  # what a keeper learned about an order, not the chain
    for part in _chunks(order_ids):
        in_part = and_(ORDERS.c.chain_id == chain_id, ORDERS.c.order_id.in_(part))
        for row in session.execute(select(ORDERS).where(in_part)).mappings():
            kept[row["order_id"]] = row
            since = row["placed_block"] if since is None else min(since, row["placed_block"])
        session.execute(delete(FILLS).where(FILLS.c.chain_id == chain_id, FILLS.c.order_id.in_(part)))
        session.execute(delete(ORDERS).where(in_part))
    for k in touched:
        if k[0] == "position":
            session.execute(delete(POSITIONS).where(*_pk_is(POSITIONS, (chain_id, *k[1:]))))
        elif k[0] == "vault":
            session.execute(delete(VAULTS).where(*_pk_is(VAULTS, (chain_id, *k[1:]))))
    stored = session.execute(
        select(EVENTS)
        .where(EVENTS.c.chain_id == chain_id, EVENTS.c.block_number >= (since or 0))
        .order_by(EVENTS.c.block_number, EVENTS.c.log_index)
    ).all()
    f = Fold(session, chain_id).run(
        [e for e in stored if key_of(contracts.get(e.address.lower(), ""), *_keyed(e)) in touched]
    )
    for order_id, old in kept.items():
        key = (chain_id, order_id)
        new = f.orders.get(key)
        if new is not None:
            marks = {"executable_block": new["executable_block"] or old["executable_block"]}
            f.orders.set(key, **marks, reorged_block=old["reorged_block"])
    f.write()


def _keyed(ev: Any) -> tuple[str, str, dict[str, Any]]:
    return ev.address, ev.name, ev.args


def _pk_is(table: Table, values: tuple[Any, ...]) -> list[Any]:
    return [c == v for c, v in zip(table.primary_key.columns, values, strict=True)]

"""Transaction records of one (chain, signer), in the store: nonce allocation and every state
change, shared by all the processes that sign with that key.

Allocation runs in one database transaction that first takes the (chain, signer) lock (a row
lock on PostgreSQL, the write lock on SQLite: BEGIN IMMEDIATE): the lowest freed nonces are
handed out first, then never-used ones, each with its record, so a process killed at any
point leaves a complete allocation or none. A partial unique index makes the database itself
refuse two live records on one nonce.

Every state change is one compare-and-set UPDATE (`WHERE state IN FROM[target]`): a change
already made, by this process or another, updates nothing and is not an error. A record
dropped frees its nonce in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Engine, Table, bindparam, create_engine, delete, func, text, update
from sqlalchemy import select as core_select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, col, select

from keepers import jsonfast
from keepers.ha.lease import Fence, NotLeader
from keepers.store import allocate_pg
from keepers.store.allocate_sqlite import SqliteAllocator
from keepers.store.engine import is_sqlite
from keepers.store.tables import ActionLedger, FreeNonce, NonceCounter, TxAttempt, TxRecord
from keepers.tx.states import FROM, LIVE, MINED, PENDING, TxState

TX_RECORDS: Table = TxRecord.__table__  # type: ignore[attr-defined]
COUNTERS: Table = NonceCounter.__table__  # type: ignore[attr-defined]
FREE: Table = FreeNonce.__table__  # type: ignore[attr-defined]
LEDGER: Table = ActionLedger.__table__  # type: ignore[attr-defined]

# Statements built once (building a statement costs more than running it). Bind names differ
# from column names: an INSERT or UPDATE reserves those for its own values.
#: Gas of a no-op (a transfer of 0 to itself): what gap fills and replacements cost.
NO_OP_GAS = 21_000
_IS_SIGNER = (COUNTERS.c.chain_id == bindparam("w_chain"), COUNTERS.c.signer == bindparam("w_signer"))
_BY_KEYS = core_select(TX_RECORDS).where(TX_RECORDS.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_COUNTER_FOR_UPDATE = core_select(COUNTERS.c.next_nonce).where(*_IS_SIGNER).with_for_update()
_COUNTER = core_select(COUNTERS.c.next_nonce).where(*_IS_SIGNER)
_SET_COUNTER = update(COUNTERS).where(*_IS_SIGNER).values(next_nonce=bindparam("w_next"))
_RECORD_COLUMNS = (
    "chain_id", "signer", "fence_token", "idempotency_key", "nonce", "state", "route", "to", "data", "value",
    "gas_limit", "max_fee_per_gas", "max_priority_fee_per_gas", "target_block", "deadline_block", "reason",
    "created_at", "updated_at",
)  # fmt: skip
# Columns named, not `*`: a table migrated from an older schema has them in another order,
# and a text query's typed columns are matched by position.
_RECORD_NAMES = ", ".join(f'"{c.name}"' for c in TX_RECORDS.c)
_PG_ALLOCATE = text(
    f"SELECT {_RECORD_NAMES} FROM keepers_allocate(:chain, :signer, :holder, CAST(:terms AS jsonb), "  # noqa: S608
    ":token, CAST(:records AS jsonb), CAST(:ledger AS jsonb))"
).columns(*TX_RECORDS.c)


@dataclass(frozen=True)
class Intent:
    """One transaction to send: its work, its fees and how long it is worth sending."""

    idempotency_key: str
    to: str | None
    data: str = "0x"
    value: int = 0
    gas_limit: int = 21_000
    route: str = "bundle"
    max_fee_per_gas: int = 0
    max_priority_fee_per_gas: int = 0
    target_block: int | None = None
    deadline_block: int | None = None


@dataclass(frozen=True)
class Move:
    """A compare-and-set state change of one record, with the fields it sets."""

    tx_id: int
    target: TxState
    reason: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    #: Moves only while the record's target block is at most this: a decision taken on one
    #: head (a missed bundle dropped, a carried one sent again) loses to a process that has
    #: meanwhile sent the record for a later block.
    target_at_most: int | None = None
    #: A record dropped frees its nonce, unless the chain used it (another transaction took it).
    free_nonce: bool = True
    #: A finalized record may move too (back to unconfirmed: a reorg deeper than
    #: `confirmations` took it).
    reopen: bool = False
    #: Narrower from-states than the target allows (a send never unconfirms a mined record).
    only_from: frozenset[TxState] | None = None

    @property
    def from_states(self) -> frozenset[TxState]:
        if self.only_from is not None:
            return FROM[self.target] & self.only_from
        return FROM[self.target] | ({TxState.FINALIZED} if self.reopen else frozenset())


@dataclass(frozen=True)
class LedgerUpdate:
    """How an action ended, for its ledger row (written with the moves that decided it)."""

    action_key: str
    status: str
    included_block: int | None = None
    tx_hashes: tuple[str, ...] = ()
    #: None keeps the row's value (the action's own valuation, written when it was sent).
    earned_wei: int | None = 0
    gas_used: int = 0
    gas_cost_wei: int = 0
    #: None keeps the row's value (written when it was sent, as earned_wei).
    coinbase_wei: int | None = 0


@dataclass
class ReconcileReport:
    chain_nonce: int
    confirmed: list[int] = field(default_factory=list)  # tx ids found mined
    consumed: list[int] = field(default_factory=list)  # tx ids whose nonce something else used
    reorged: list[int] = field(default_factory=list)  # tx ids no longer mined
    gaps: list[int] = field(default_factory=list)  # nonces that must be filled
    recovered: list[int] = field(default_factory=list)  # unheld nonces at or above the chain's, freed
    moved: list[int] = field(default_factory=list)  # tx ids this reconciliation moved (not another process)


#: A receipt lookup for reconciliation: record -> block number, or None if not mined.
ReceiptLookup = Callable[[TxRecord], int | None]


class FenceSource(Protocol):
    def fence(self) -> Fence: ...


def action_key_of(record: TxRecord) -> str:
    """The action a record belongs to: its key up to the call index (`<action>#<i>`)."""
    key = record.idempotency_key
    return key.rsplit("#", 1)[0] if "#" in key else key


_ALLOCATION_ENGINES: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_ALLOCATION_LOCK = threading.Lock()


def _allocation_engine(engine: Engine) -> Engine:
    """One allocation pool per store engine (every TxRecords on it shares the connections)."""
    with _ALLOCATION_LOCK:
        found = _ALLOCATION_ENGINES.get(engine)
        if found is None:
            found = create_engine(
                engine.url, isolation_level="AUTOCOMMIT", pool_size=2, max_overflow=8, pool_pre_ping=False
            )
            _ALLOCATION_ENGINES[engine] = found
        return found


class TxRecords:
    """The records, nonces and attempts of one (chain, signer). With `fences` (a leader
    elector or shard set) every new nonce is handed out only under leases still held, checked
    in the same database transaction: a replica that lost its lease gets NotLeader."""

    def __init__(self, engine: Engine, chain_id: int, signer: str, fences: FenceSource | None = None) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.signer = signer.lower()
        self.fences = fences
        self._key = {"w_chain": chain_id, "w_signer": self.signer}
        #: Database transactions begun (the benches count them per action).
        self.transactions = 0
        #: PostgreSQL: a pool of its own in autocommit for the one-statement allocation, without
        #: the ping before each checkout (a round trip per allocation): a connection that died
        #: is retried once instead, which is safe as an allocation is idempotent by key.
        self._pg_allocate = None if is_sqlite(engine) else _allocation_engine(engine)
        self._sqlite = SqliteAllocator(
            TX_RECORDS, _RECORD_COLUMNS, LEDGER, engine.dialect, chain_id, self.signer
        )

    def _session(self) -> Session:
        self.transactions += 1
        return Session(self.engine)

    # ----------------------------------------------------------------- locking

    def _lock(self, session: Session) -> int:
        """Locks the counter row for this transaction (creating it at 0); its next nonce."""
        pg = not is_sqlite(self.engine)
        nxt = session.execute(_COUNTER_FOR_UPDATE if pg else _COUNTER, self._key).scalar()
        if nxt is not None:
            return int(nxt)
        if pg:
            # Racing creators: the loser's insert does nothing and it waits on the winner's row.
            session.execute(_pg_insert_ignore(self.chain_id, self.signer))
            return int(session.execute(_COUNTER_FOR_UPDATE, self._key).scalar_one())
        # BEGIN IMMEDIATE already serialises writers: a plain insert cannot race.
        session.add(NonceCounter(chain_id=self.chain_id, signer=self.signer, next_nonce=0))
        session.flush()
        return 0

    def _fence_token(self, session: Session) -> int | None:
        if self.fences is None:
            return None
        fence = self.fences.fence()
        fence.verify(session)
        return fence.token

    # -------------------------------------------------------------- allocation

    def allocate(self, intents: Sequence[Intent], ledger: Sequence[ActionLedger] = ()) -> list[TxRecord]:
        """Records holding consecutive nonces for `intents` (the lowest free ones first), in
        one database transaction with the actions' ledger rows; a key already allocated gets
        its record back instead of a new nonce."""
        if not intents:
            return []
        if self._pg_allocate is not None:
            return self._allocate_pg(intents, ledger)
        return self._allocate_sqlite(intents, ledger)

    def _allocate_sqlite(self, intents: Sequence[Intent], ledger: Sequence[ActionLedger]) -> list[TxRecord]:
        """`allocate` on SQLite, on the DBAPI connection (keepers.store.allocate_sqlite)."""
        fence = self.fences.fence() if self.fences is not None else None
        token = fence.token if fence is not None else None
        now = dt.datetime.now(dt.UTC)
        values = {i.idempotency_key: self._values(i, 0, token, now) for i in intents}
        self.transactions += 1
        refused: sqlite3.IntegrityError | None = None
        raw = self.engine.raw_connection()
        try:
            made = self._sqlite.allocate(
                raw.driver_connection,  # type: ignore[arg-type]
                list(values.values()),
                [r.model_dump(exclude={"id"}) for r in ledger],
                fence,
            )
        except sqlite3.IntegrityError as exc:  # unless a racing allocation of the keys won
            refused, made = exc, {}
        finally:
            raw.close()
        out: dict[str, TxRecord] = {}
        for key, (tx_id, nonce) in made.items():
            out[key] = TxRecord(**{**values[key], "id": tx_id, "nonce": nonce})
        if len(out) < len(intents):  # keys allocated before: their records are the answer
            with self._session() as session:
                out.update(self._by_keys(session, [k for k in values if k not in out]))
        if refused is not None and len(out) < len(intents):
            raise refused
        return [out[i.idempotency_key] for i in intents]

    def _allocate_pg(self, intents: Sequence[Intent], ledger: Sequence[ActionLedger]) -> list[TxRecord]:
        """`allocate` on PostgreSQL: one statement, one round trip (keepers.store.allocate_pg)."""
        assert self._pg_allocate is not None
        holder, terms, token = "", [], None
        if self.fences is not None:
            fence = self.fences.fence()
            holder, terms, token = fence.holder, [list(t) for t in fence.terms], fence.token
        now = dt.datetime.now(dt.UTC)
        records = [
            {c: v for c, v in self._values(i, 0, token, now).items() if c in allocate_pg.RECORD_COLUMNS}
            | {"value": str(i.value)}
            for i in intents
        ]
        params = {
            "chain": self.chain_id, "signer": self.signer, "holder": holder, "token": token,
            "terms": jsonfast.dumps(terms), "records": jsonfast.dumps(records),
            "ledger": jsonfast.dumps([r.model_dump(mode="json", exclude={"id"}) for r in ledger]),
        }  # fmt: skip
        self.transactions += 1
        try:
            try:
                with self._pg_allocate.connect() as conn:
                    rows = conn.execute(_PG_ALLOCATE, params).mappings().all()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                with self._pg_allocate.connect() as conn:  # the pool was emptied: a new connection
                    rows = conn.execute(_PG_ALLOCATE, params).mappings().all()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == allocate_pg.NOT_LEADER:
                raise NotLeader(str(exc.orig).splitlines()[0]) from None
            if isinstance(exc, IntegrityError):
                # A racing allocation of the same key won: its records are the answer.
                with self._session() as session:
                    known = self._by_keys(session, [i.idempotency_key for i in intents])
                if len(known) == len(intents):
                    return [known[i.idempotency_key] for i in intents]
            raise
        out = {r["idempotency_key"]: TxRecord(**r) for r in rows}
        return [out[i.idempotency_key] for i in intents]

    def _values(self, intent: Intent, nonce: int, token: int | None, now: dt.datetime) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id, "signer": self.signer, "fence_token": token,
            "idempotency_key": intent.idempotency_key, "nonce": nonce, "state": TxState.UNSTARTED.value,
            "route": intent.route, "to": intent.to, "data": intent.data, "value": intent.value,
            "gas_limit": intent.gas_limit, "max_fee_per_gas": intent.max_fee_per_gas,
            "max_priority_fee_per_gas": intent.max_priority_fee_per_gas, "target_block": intent.target_block,
            "deadline_block": intent.deadline_block, "reason": "", "created_at": now, "updated_at": now,
        }  # fmt: skip

    def _by_keys(self, session: Session, keys: Sequence[str]) -> dict[str, TxRecord]:
        rows = session.execute(_BY_KEYS, {"keys": list(keys)}).mappings().all()
        return {r["idempotency_key"]: TxRecord(**r) for r in rows}

    @staticmethod
    def _add_ledger(session: Session, rows: Sequence[ActionLedger]) -> None:
        if not rows:
            return
        keys = [r.idempotency_key for r in rows]
        have = set(
            session.exec(
                select(ActionLedger.idempotency_key).where(col(ActionLedger.idempotency_key).in_(keys))
            ).all()
        )
        for r in rows:
            if r.idempotency_key not in have:
                session.add(ActionLedger(**r.model_dump(exclude={"id"})))

    def record_ledger(self, rows: Sequence[ActionLedger]) -> None:
        """Ledger rows of actions that never reached allocation (rejected before it)."""
        if rows:
            with self._session() as session, session.begin():
                self._add_ledger(session, rows)

    # ------------------------------------------------------------- transitions

    def apply(
        self,
        moves: Iterable[Move],
        ledger: Iterable[LedgerUpdate] = (),
        attempts: Iterable[TxAttempt] = (),
    ) -> list[int]:
        """Applies compare-and-set moves (with the attempts that made them and the ledger rows
        they decide) in one database transaction; returns the ids that moved. A move whose
        record is not in one of its target's from-states changes nothing. A record dropped
        frees its nonce, unless its move says the chain used it."""
        moves, ledger, attempts = list(moves), list(ledger), list(attempts)
        if not (moves or ledger or attempts):
            return []
        moved: list[int] = []
        with self._session() as session, session.begin():
            if any(m.target is TxState.DROPPED for m in moves):
                self._lock(session)  # freeing nonces: serialised with allocation
            now = dt.datetime.now(dt.UTC)
            for m in moves:
                where = [
                    TX_RECORDS.c.id == m.tx_id,
                    TX_RECORDS.c.state.in_([s.value for s in m.from_states]),
                ]
                if m.target_at_most is not None:
                    where.append(TX_RECORDS.c.target_block <= m.target_at_most)
                stmt = (
                    update(TX_RECORDS)
                    .where(*where)
                    .values(state=m.target.value, reason=m.reason, updated_at=now, **m.fields)
                    .returning(TX_RECORDS.c.id, TX_RECORDS.c.nonce)
                )
                row = session.execute(stmt).first()
                if row is None:
                    continue
                moved.append(int(row[0]))
                if m.target is TxState.DROPPED and m.free_nonce and not self._held(session, int(row[1])):
                    session.add(FreeNonce(chain_id=self.chain_id, signer=self.signer, nonce=int(row[1])))
            moving = {m.tx_id for m in moves}
            for a in attempts:
                # An attempt of a record this call moves is recorded only if it moved (sent).
                if a.tx_id not in moving or a.tx_id in moved:
                    session.add(a)
            for u in ledger:
                if u.status == "pending":
                    # Reorged out: the action is undecided again (a later settlement ends it).
                    session.execute(
                        update(LEDGER)
                        .where(LEDGER.c.idempotency_key == u.action_key, LEDGER.c.status == "included")
                        .values(status="pending", included_block=None)
                    )
                    continue
                values: dict[str, Any] = {
                    "status": u.status, "included_block": u.included_block, "tx_hashes": list(u.tx_hashes),
                    "gas_used": u.gas_used, "gas_cost_wei": u.gas_cost_wei,
                }  # fmt: skip
                if u.coinbase_wei is not None:
                    values["coinbase_wei"] = u.coinbase_wei
                if u.earned_wei is not None:  # None: keep what the row says (decided by a process since gone)
                    values["earned_wei"] = u.earned_wei
                session.execute(
                    update(LEDGER)
                    .where(LEDGER.c.idempotency_key == u.action_key, LEDGER.c.status == "pending")
                    .values(**values)
                )
        return moved

    def _held(self, session: Session, nonce: int) -> bool:
        """Whether a live record (a replacement, a racing allocation) holds `nonce`, or it is
        free already."""
        live = session.exec(
            select(func.count()).where(
                TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer, TxRecord.nonce == nonce,
                col(TxRecord.state).in_([s.value for s in LIVE]),
            )
        ).one()  # fmt: skip
        return bool(live) or session.get(FreeNonce, (self.chain_id, self.signer, nonce)) is not None

    def set_gas(self, limits: dict[int, int]) -> None:
        """New gas limits for unsent records (signed again from the record, so kept in it)."""
        with self._session() as session, session.begin():
            for tx_id, gas in limits.items():
                session.execute(
                    update(TX_RECORDS)
                    .where(TX_RECORDS.c.id == tx_id, TX_RECORDS.c.state == TxState.UNSTARTED.value)
                    .values(gas_limit=gas)
                )

    def renumber(self, keep: Sequence[int], drop: Sequence[int], reason: str) -> list[TxRecord]:
        """Drops `drop` (unsent records of one batch) and moves `keep` (unsent too, in nonce
        order) down onto the batch's lowest nonces, so the batch stays a run with no hole; the
        nonces left over are freed. Returns the kept records as they now are."""
        with self._session() as session, session.begin():
            self._lock(session)
            ids = list(keep) + list(drop)
            rows = {r.id: r for r in session.exec(select(TxRecord).where(col(TxRecord.id).in_(ids))).all()}
            if any(TxState(r.state) is not TxState.UNSTARTED for r in rows.values()):
                raise RuntimeError("renumber: only unsent records of one batch can be renumbered")
            nonces = sorted(r.nonce for r in rows.values())
            now = dt.datetime.now(dt.UTC)
            for i in drop:
                session.execute(
                    update(TX_RECORDS)
                    .where(TX_RECORDS.c.id == i)
                    .values(state=TxState.DROPPED.value, reason=reason, updated_at=now)
                )
            kept = sorted((rows[i] for i in keep), key=lambda r: r.nonce)
            # Ascending: each kept record moves onto a nonce that a dropped record or an
            # earlier kept one (already moved down) has left.
            for rec, nonce in zip(kept, nonces, strict=False):
                session.execute(
                    update(TX_RECORDS).where(TX_RECORDS.c.id == rec.id).values(nonce=nonce, updated_at=now)
                )
                rec.nonce = nonce
            for nonce in nonces[len(kept) :]:
                session.add(FreeNonce(chain_id=self.chain_id, signer=self.signer, nonce=nonce))
            for r in kept:
                session.expunge(r)
            return kept

    # ---------------------------------------------------------------- queries

    def open_records(self, finalized_from: int | None = None) -> list[TxRecord]:
        """Records still pending, and mined ones not yet final (a reorg may still take them);
        with `finalized_from`, also the finalized ones holding a nonce at or above it."""
        states = [s.value for s in PENDING | {TxState.CONFIRMED}]
        wanted: ColumnElement[bool] = col(TxRecord.state).in_(states)
        if finalized_from is not None:
            final = col(TxRecord.state) == TxState.FINALIZED.value
            wanted |= final & (col(TxRecord.nonce) >= finalized_from)
        with self._session() as session:
            rows = session.exec(
                select(TxRecord)
                .where(TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer, wanted)
                .order_by(col(TxRecord.nonce))
            ).all()
            for r in rows:
                session.expunge(r)
            return list(rows)

    def orders_of(self, action_keys: Sequence[str]) -> dict[str, list[int]]:
        """The orders each action fills, as the process that decided it wrote them in its ledger
        row (for actions that another process sharing the signer sent)."""
        if not action_keys:
            return {}
        with self._session() as session:
            rows = session.execute(
                select(LEDGER.c.idempotency_key, LEDGER.c.order_ids).where(
                    LEDGER.c.chain_id == self.chain_id, LEDGER.c.idempotency_key.in_(list(action_keys))
                )
            ).all()
        return {str(key): list(orders or []) for key, orders in rows}

    def attempt_hashes(self, tx_ids: Sequence[int]) -> dict[int, list[str]]:
        """Every hash each record was sent under (fee bumps are new hashes)."""
        if not tx_ids:
            return {}
        out: dict[int, list[str]] = {}
        with self._session() as session:
            for tx_id, h in session.exec(
                select(TxAttempt.tx_id, TxAttempt.tx_hash).where(col(TxAttempt.tx_id).in_(list(tx_ids)))
            ).all():
                out.setdefault(int(tx_id), []).append(str(h))
        return out

    def get(self, tx_id: int) -> TxRecord | None:
        with self._session() as session:
            rec = session.get(TxRecord, tx_id)
            if rec is not None:
                session.expunge(rec)
            return rec

    def live_nonces(self) -> list[int]:
        with self._session() as session:
            return sorted(
                session.exec(
                    select(TxRecord.nonce).where(
                        TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer,
                        col(TxRecord.state).in_([s.value for s in LIVE]),
                    )
                ).all()
            )  # fmt: skip

    def next_nonce(self) -> int:
        with self._session() as session:
            row = session.get(NonceCounter, (self.chain_id, self.signer))
            return row.next_nonce if row else 0

    def state_counts(self) -> dict[str, int]:
        with self._session() as session:
            rows = session.exec(
                select(TxRecord.state, func.count())
                .where(TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer)
                .group_by(TxRecord.state)
            ).all()
            return {str(state): int(n) for state, n in rows}

    # ---------------------------------------------------------- reconciliation

    def reconcile(
        self,
        chain_nonce: int,
        mined_at: ReceiptLookup,
        ended: Callable[[Sequence[TxRecord], Sequence[Move]], list[LedgerUpdate]] | None = None,
        *,
        after_reorg: bool = False,
    ) -> ReconcileReport:
        """Aligns the records with the chain, whose mined transaction count is `chain_nonce`.

        Below it every nonce is used: a pending record of ours is confirmed if its transaction
        was mined, else something else used the nonce and the record is dropped (its nonce is
        not freed: it is used). At or above it a record we thought mined was reorged out. The
        counter never falls below the chain, and nonces between the chain's count and the
        counter that nothing holds are freed. A record is reorged out only if its receipt is not
        on the canonical chain either (a node that lags reads a lower count, not a reorg).

        `after_reorg` (the follower saw one): finalized records at or above the count are read
        too, as a reorg deeper than `confirmations` can take them (their nonces would otherwise
        be held for good); never on the count alone, which a lagging node can understate.
        """
        report = ReconcileReport(chain_nonce=chain_nonce)
        records = self.open_records(finalized_from=chain_nonce if after_reorg else None)
        moves: list[Move] = []
        for rec in records:
            assert rec.id is not None
            state = TxState(rec.state)
            if rec.nonce < chain_nonce and state in PENDING:
                block = mined_at(rec)
                if block is not None:
                    moves.append(Move(rec.id, TxState.CONFIRMED, "found mined", {"included_block": block}))
                    report.confirmed.append(rec.id)
                else:
                    reason = "nonce used by another transaction"
                    moves.append(Move(rec.id, TxState.DROPPED, reason, free_nonce=False))
                    report.consumed.append(rec.id)
            elif rec.nonce >= chain_nonce and state in MINED and mined_at(rec) is None:
                reorged = Move(
                    rec.id, TxState.UNCONFIRMED, "reorged out", {"included_block": None}, reopen=True
                )
                moves.append(reorged)
                report.reorged.append(rec.id)
        report.moved = self.apply(moves, ended(records, moves) if ended is not None and moves else ())
        with self._session() as session, session.begin():
            next_nonce = self._lock(session)
            # Nonces the chain has used are not free, whoever used them.
            session.execute(
                delete(FREE).where(
                    FREE.c.chain_id == self.chain_id, FREE.c.signer == self.signer, FREE.c.nonce < chain_nonce
                )
            )
            if next_nonce < chain_nonce:
                # The key was used outside this manager: never hand out what the chain has seen.
                session.execute(_SET_COUNTER, {**self._key, "w_next": chain_nonce})
                next_nonce = chain_nonce
            report.recovered = self._free_unheld(session, chain_nonce, next_nonce)
            report.gaps = self._gaps(session)
        return report

    def _free_unheld(self, session: Session, chain_nonce: int, next_nonce: int) -> list[int]:
        """Frees every nonce from the chain's count up to the counter that no live record holds
        and that is not free already (given up on a reading the chain later contradicted)."""
        if next_nonce <= chain_nonce:
            return []
        held = set(
            session.exec(
                select(TxRecord.nonce).where(
                    TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer,
                    TxRecord.nonce >= chain_nonce, col(TxRecord.state).in_([s.value for s in LIVE]),
                )
            ).all()
        )  # fmt: skip
        held.update(
            session.exec(
                select(FreeNonce.nonce).where(
                    FreeNonce.chain_id == self.chain_id, FreeNonce.signer == self.signer,
                    FreeNonce.nonce >= chain_nonce,
                )
            ).all()
        )  # fmt: skip
        recovered = [n for n in range(chain_nonce, next_nonce) if n not in held]
        for n in recovered:
            session.add(FreeNonce(chain_id=self.chain_id, signer=self.signer, nonce=n))
        session.flush()
        return recovered

    def gaps(self) -> list[int]:
        """Free nonces below the highest pending one: later transactions wait on them."""
        with self._session() as session, session.begin():
            self._lock(session)
            return self._gaps(session)

    def _gaps(self, session: Session) -> list[int]:
        top = session.exec(
            select(func.max(TxRecord.nonce)).where(
                TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer,
                col(TxRecord.state).in_([s.value for s in PENDING]),
            )
        ).one()  # fmt: skip
        if top is None:
            return []
        return list(
            session.exec(
                select(FreeNonce.nonce)
                .where(
                    FreeNonce.chain_id == self.chain_id,
                    FreeNonce.signer == self.signer,
                    FreeNonce.nonce < top,
                )
                .order_by(col(FreeNonce.nonce))
            ).all()
        )

    def claim_gap(
        self, nonce: int, idempotency_key: str, fees: tuple[int, int], deadline: int
    ) -> TxRecord | None:
        """A no-op self-transfer record on a gap nonce, or None if it was filled meanwhile."""
        with self._session() as session, session.begin():
            self._lock(session)
            free = session.get(FreeNonce, (self.chain_id, self.signer, nonce))
            if free is None:
                return None
            token = self._fence_token(session)
            session.delete(free)
            return self._add_noop(session, nonce, idempotency_key, fees, deadline, token)

    def supersede(self, tx_id: int, reason: str, fees: tuple[int, int], deadline: int) -> TxRecord | None:
        """Drops a pending record whose transaction may still land and hands its nonce, without
        freeing it, to a new no-op record (a self-transfer that replaces it at a higher fee).
        None when the record was decided meanwhile."""
        with self._session() as session, session.begin():
            self._lock(session)
            old = session.get(TxRecord, tx_id)
            if old is None or TxState(old.state) not in FROM[TxState.DROPPED]:
                return None
            old.state, old.reason, old.updated_at = TxState.DROPPED, reason, dt.datetime.now(dt.UTC)
            session.add(old)
            session.flush()
            return self._add_noop(
                session, old.nonce, f"{old.idempotency_key}:cancel", fees, deadline, old.fence_token
            )

    def _add_noop(
        self, session: Session, nonce: int, key: str, fees: tuple[int, int], deadline: int, token: int | None
    ) -> TxRecord:
        record = TxRecord(
            fence_token=token, idempotency_key=key, chain_id=self.chain_id, signer=self.signer, nonce=nonce,
            state=TxState.UNSTARTED, route="gap-fill", to=self.signer, gas_limit=NO_OP_GAS,
            max_fee_per_gas=fees[0], max_priority_fee_per_gas=fees[1], deadline_block=deadline,
        )  # fmt: skip
        session.add(record)
        session.flush()
        session.expunge(record)
        return record


def _pg_insert_ignore(chain_id: int, signer: str) -> Any:
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(COUNTERS).values(chain_id=chain_id, signer=signer, next_nonce=0).on_conflict_do_nothing()

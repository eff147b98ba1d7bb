"""The nonce manager: one nonce sequence per (chain, signer), shared by every process that
signs with that key, through the store.

Every mutation runs in one database transaction that first takes the (chain, signer) lock:
a row lock (SELECT ... FOR UPDATE) on PostgreSQL, the database write lock (BEGIN IMMEDIATE)
on SQLite. Inside it, allocation takes the lowest freed nonce, else the next never-used one,
and writes the transaction record that holds it, so a process killed at any point leaves
either a complete allocation or none. A partial unique index makes the database itself refuse
two live records on one nonce.

Bundles and public transactions draw from this one source, so they cannot collide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, Table, bindparam, delete, func, insert, text, update
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from keepers.ha.lease import Fence
from keepers.store.engine import is_sqlite
from keepers.store.tables import FreeNonce, NonceCounter, TxAttempt, TxRecord
from keepers.tx.states import LIVE, PENDING, TxState, check_transition

TX_RECORDS: Table = TxRecord.__table__  # type: ignore[attr-defined]
COUNTERS: Table = NonceCounter.__table__  # type: ignore[attr-defined]
FREE: Table = FreeNonce.__table__  # type: ignore[attr-defined]

# The allocation's statements, built once (building a statement costs more than running it).
# Bind names differ from column names: an INSERT or UPDATE reserves those for its own values.
_IS_SIGNER = (COUNTERS.c.chain_id == bindparam("w_chain"), COUNTERS.c.signer == bindparam("w_signer"))
_BY_KEY = core_select(TX_RECORDS).where(TX_RECORDS.c.idempotency_key == bindparam("key"))
_COUNTER = core_select(COUNTERS.c.next_nonce).where(*_IS_SIGNER)
_COUNTER_FOR_UPDATE = _COUNTER.with_for_update()
_LOWEST_FREE = core_select(func.min(FREE.c.nonce)).where(
    FREE.c.chain_id == bindparam("w_chain"), FREE.c.signer == bindparam("w_signer")
)
_TAKE_FREE = delete(FREE).where(
    FREE.c.chain_id == bindparam("w_chain"), FREE.c.signer == bindparam("w_signer"),
    FREE.c.nonce == bindparam("w_nonce"),
)  # fmt: skip
_BUMP = update(COUNTERS).where(*_IS_SIGNER).values(next_nonce=bindparam("w_next"))
_RECORD_COLUMNS = (
    "chain_id", "signer", "fence_token", "idempotency_key", "nonce", "state", "route", "to", "data", "value",
    "gas_limit", "deadline_block", "reason", "created_at", "updated_at",
)  # fmt: skip
_INSERT = insert(TX_RECORDS).values({c: bindparam(c) for c in _RECORD_COLUMNS}).returning(TX_RECORDS.c.id)
# PostgreSQL: the nonce taken and the record written in one statement (a data-modifying CTE),
# in SQL text because SQLAlchemy folds the INSERT's parameters into a CTE UPDATE's SET.
# PostgreSQL: after the lock, one statement takes the lowest freed nonce (or the counter's next),
# writes the record and returns both; its snapshot starts after the lock was granted, so what it
# reads of the freed nonces is current. SQL text: SQLAlchemy folds an INSERT's parameters into
# a CTE UPDATE's SET clause.
_ALLOCATE_PG = text("""
WITH lowest AS (
    SELECT min(nonce) AS nonce FROM freenonce WHERE chain_id = :w_chain AND signer = :w_signer
), take AS (
    DELETE FROM freenonce
    WHERE chain_id = :w_chain AND signer = :w_signer AND nonce = (SELECT nonce FROM lowest)
), bump AS (
    UPDATE noncecounter SET next_nonce = next_nonce + 1
    WHERE chain_id = :w_chain AND signer = :w_signer AND (SELECT nonce FROM lowest) IS NULL
)
INSERT INTO txrecord (chain_id, signer, fence_token, idempotency_key, nonce, state, route, "to", data,
                      value, gas_limit, deadline_block, reason, created_at, updated_at)
VALUES (:chain_id, :signer, :fence_token, :idempotency_key, COALESCE((SELECT nonce FROM lowest), :w_next),
        :state, :route, :to, :data, :value, :gas_limit, :deadline_block, :reason, :created_at, :updated_at)
RETURNING id, nonce""")

#: A receipt lookup for reconciliation: tx hash -> block number, or None if not mined.
ReceiptLookup = Callable[[str], int | None]


@dataclass(frozen=True)
class Intent:
    """What the caller wants sent; the manager gives it a nonce and a record."""

    idempotency_key: str
    to: str | None
    data: str = "0x"
    value: int = 0
    gas_limit: int = 0
    route: str = "bundle"
    deadline_block: int | None = None


@dataclass
class ReconcileReport:
    chain_nonce: int
    confirmed: list[int] = field(default_factory=list)  # tx ids found mined
    consumed: list[int] = field(default_factory=list)  # tx ids whose nonce something else used
    reorged: list[int] = field(default_factory=list)  # tx ids no longer mined
    gaps: list[int] = field(default_factory=list)  # nonces that must be filled
    recovered: list[int] = field(default_factory=list)  # unheld nonces at or above the chain's, freed


class FenceSource(Protocol):
    def fence(self) -> Fence: ...


class NonceManager:
    """Allocates, tracks and frees nonces for one (chain, signer). With `fences` (a leader
    elector) every new nonce is handed out only under a lease still held, checked in the same
    transaction: a replica that lost its lease gets NotLeader instead of a nonce."""

    def __init__(self, engine: Engine, chain_id: int, signer: str, fences: FenceSource | None = None) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.signer = signer.lower()
        self.fences = fences

    def _fenced(self, session: Session) -> int | None:
        """Checks the lease inside this transaction; the token the new record carries."""
        if self.fences is None:
            return None
        fence = self.fences.fence()
        fence.verify(session)
        return fence.token

    # ----------------------------------------------------------------- locking

    def _locked(self, session: Session) -> NonceCounter:
        """The counter row, locked for this transaction (created at nonce 0 if absent)."""
        key = (self.chain_id, self.signer)
        stmt = select(NonceCounter).where(
            NonceCounter.chain_id == self.chain_id, NonceCounter.signer == self.signer
        )
        if not is_sqlite(self.engine):
            stmt = stmt.with_for_update()
        row = session.exec(stmt).first()
        if row is None:
            if is_sqlite(self.engine):
                # BEGIN IMMEDIATE already serialises writers: a plain insert cannot race.
                session.add(NonceCounter(chain_id=key[0], signer=key[1], next_nonce=0))
                session.flush()
            else:
                # Racing creators: the loser's insert does nothing and it waits on the winner's row.
                session.exec(_pg_insert_ignore(*key))  # type: ignore[call-overload]
            row = session.exec(stmt).one()
        return row

    # -------------------------------------------------------------- allocation

    def allocate(self, intent: Intent) -> TxRecord:
        """A record holding a nonce for `intent`; the same record again for a known key.

        The hot path of every submission, so it is Core SQL, not the ORM, and few round trips
        run under the counter lock: the lock, one statement that takes the nonce and writes the
        record (three on SQLite), the commit. A
        known key is answered before the lock is taken; two racing allocations of one key meet
        the unique index and the loser returns the winner's.
        """
        pg = not is_sqlite(self.engine)
        key = {"w_chain": self.chain_id, "w_signer": self.signer}
        try:
            with Session(self.engine) as session, session.begin():
                known = self._by_key(session, intent.idempotency_key)
                if known is not None:
                    return known
                next_nonce = session.execute(_COUNTER_FOR_UPDATE if pg else _COUNTER, key).scalar()
                if next_nonce is None:
                    next_nonce = self._locked(session).next_nonce  # creates the row (and locks it)
                token = self._fenced(session)
                now = dt.datetime.now(dt.UTC)
                values: dict[str, Any] = {
                    "chain_id": self.chain_id, "signer": self.signer, "fence_token": token,
                    "idempotency_key": intent.idempotency_key, "nonce": next_nonce,
                    "state": TxState.UNSTARTED.value, "route": intent.route, "to": intent.to,
                    "data": intent.data, "value": intent.value, "gas_limit": intent.gas_limit,
                    "deadline_block": intent.deadline_block, "reason": "", "created_at": now,
                    "updated_at": now,
                }  # fmt: skip
                params = {**values, **key, "value": str(intent.value), "w_next": next_nonce}
                if pg:
                    values["id"], values["nonce"] = session.execute(_ALLOCATE_PG, params).one()
                else:
                    lowest = session.execute(_LOWEST_FREE, key).scalar()
                    if lowest is not None:
                        params["nonce"] = values["nonce"] = params["w_nonce"] = lowest
                        session.execute(_TAKE_FREE, params)
                    else:
                        session.execute(_BUMP, {**key, "w_next": next_nonce + 1})
                    values["id"] = session.execute(_INSERT, params).scalar_one()
                return TxRecord(**values)
        except IntegrityError:
            with Session(self.engine) as session:
                known = self._by_key(session, intent.idempotency_key)
            if known is None:
                raise
            return known

    @staticmethod
    def _by_key(session: Session, key: str) -> TxRecord | None:
        row = session.execute(_BY_KEY, {"key": key}).mappings().first()
        return TxRecord(**row) if row is not None else None

    # ------------------------------------------------------------- transitions

    def transition(self, tx_id: int, target: TxState, reason: str = "", **fields: object) -> TxRecord:
        """Moves a record to `target` (checked against the state machine); dropping frees its nonce."""
        with Session(self.engine) as session, session.begin():
            self._locked(session)
            record = session.get(TxRecord, tx_id)
            if record is None:
                raise KeyError(f"no transaction {tx_id}")
            self._move(session, record, target, reason)
            for name, value in fields.items():
                setattr(record, name, value)
            session.add(record)
            session.flush()
            session.expunge(record)
            return record

    def release(self, tx_id: int, reason: str) -> TxRecord:
        """The transaction will not land (e.g. its bundle missed every block): free the nonce."""
        return self.transition(tx_id, TxState.DROPPED, reason)

    def _move(self, session: Session, record: TxRecord, target: TxState, reason: str) -> None:
        assert record.id is not None
        check_transition(record.id, TxState(record.state), target)
        record.state = target
        record.reason = reason
        record.updated_at = dt.datetime.now(dt.UTC)
        if target is TxState.DROPPED:
            session.add(FreeNonce(chain_id=self.chain_id, signer=self.signer, nonce=record.nonce))

    # ---------------------------------------------------------- reconciliation

    def reconcile(self, chain_nonce: int, receipt_block: ReceiptLookup) -> ReconcileReport:
        """Aligns the records with the chain, whose mined transaction count is `chain_nonce`.

        Below it every nonce is used: our pending record is confirmed if its hash was mined,
        otherwise something else used the nonce and the record is dropped. At or above it a
        record we thought mined was reorged out. The counter never falls below the chain.
        """
        report = ReconcileReport(chain_nonce=chain_nonce)
        with Session(self.engine) as session, session.begin():
            counter = self._locked(session)
            live = session.exec(
                select(TxRecord).where(
                    TxRecord.chain_id == self.chain_id,
                    TxRecord.signer == self.signer,
                    TxRecord.state.in_([s.value for s in LIVE]),  # type: ignore[attr-defined]
                )
            ).all()
            for rec in live:
                assert rec.id is not None
                state = TxState(rec.state)
                mined_at = receipt_block(rec.tx_hash) if rec.tx_hash else None
                if rec.nonce < chain_nonce and state in PENDING:
                    if mined_at is not None:
                        if state is TxState.UNSTARTED:
                            self._move(session, rec, TxState.IN_FLIGHT, "found mined")
                        self._move(session, rec, TxState.CONFIRMED, "found mined")
                        rec.included_block = mined_at
                        report.confirmed.append(rec.id)
                    else:
                        check_transition(rec.id, state, TxState.DROPPED)
                        rec.state, rec.reason = TxState.DROPPED, "nonce used by another transaction"
                        report.consumed.append(rec.id)
                elif rec.nonce >= chain_nonce and state is TxState.CONFIRMED:
                    self._move(session, rec, TxState.UNCONFIRMED, "reorged out")
                    rec.included_block = None
                    report.reorged.append(rec.id)
                session.add(rec)
            # Nonces the chain has used are not free, whoever used them.
            session.exec(
                delete(FreeNonce).where(
                    FreeNonce.chain_id == self.chain_id,  # type: ignore[arg-type]
                    FreeNonce.signer == self.signer,  # type: ignore[arg-type]
                    FreeNonce.nonce < chain_nonce,  # type: ignore[arg-type]
                )
            )
            if counter.next_nonce < chain_nonce:
                # The key was used outside this manager: never hand out what the chain has seen.
                counter.next_nonce = chain_nonce
                session.add(counter)
            session.flush()
            report.recovered = self._free_unheld(session, chain_nonce, counter.next_nonce)
            report.gaps = self._gaps(session)
        return report

    def _free_unheld(self, session: Session, chain_nonce: int, next_nonce: int) -> list[int]:
        """Frees every nonce from the chain's count up to the counter that no live record holds
        and that is not free already. Such a nonce was given up on a reading the chain later
        contradicted (a node that served a block that was then reorged out, or one that ran
        ahead of the others); left alone it would be a gap no record knows about."""
        if next_nonce <= chain_nonce:
            return []
        held = set(
            session.exec(
                select(TxRecord.nonce).where(
                    TxRecord.chain_id == self.chain_id,
                    TxRecord.signer == self.signer,
                    TxRecord.nonce >= chain_nonce,
                    col(TxRecord.state).in_([s.value for s in LIVE]),
                )
            ).all()
        )
        held.update(
            session.exec(
                select(FreeNonce.nonce).where(
                    FreeNonce.chain_id == self.chain_id,
                    FreeNonce.signer == self.signer,
                    FreeNonce.nonce >= chain_nonce,
                )
            ).all()
        )
        recovered = [n for n in range(chain_nonce, next_nonce) if n not in held]
        for n in recovered:
            session.add(FreeNonce(chain_id=self.chain_id, signer=self.signer, nonce=n))
        session.flush()
        return recovered

    def decided_bundles(self, head: int) -> list[TxRecord]:
        """Bundle records still pending whose last target block is built (`head` reached it):
        they either landed or never will."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(TxRecord).where(
                    TxRecord.chain_id == self.chain_id,
                    TxRecord.signer == self.signer,
                    TxRecord.route == "bundle",
                    col(TxRecord.state).in_([TxState.IN_FLIGHT.value, TxState.UNCONFIRMED.value]),
                    col(TxRecord.deadline_block).is_not(None),
                    col(TxRecord.deadline_block) <= head,
                )
            ).all()
            for r in rows:
                session.expunge(r)
            return list(rows)

    def gaps(self) -> list[int]:
        """Free nonces below the highest live one: later transactions wait on them."""
        with Session(self.engine) as session, session.begin():
            self._locked(session)
            return self._gaps(session)

    def _gaps(self, session: Session) -> list[int]:
        top = session.exec(
            select(func.max(TxRecord.nonce)).where(
                TxRecord.chain_id == self.chain_id,
                TxRecord.signer == self.signer,
                TxRecord.state.in_([s.value for s in PENDING]),  # type: ignore[attr-defined]
            )
        ).one()
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
                .order_by(FreeNonce.nonce)  # type: ignore[arg-type]
            ).all()
        )

    def claim_gap(self, nonce: int, idempotency_key: str) -> TxRecord | None:
        """A no-op self-transfer record on a gap nonce, or None if the gap was filled meanwhile."""
        with Session(self.engine) as session, session.begin():
            self._locked(session)
            free = session.get(FreeNonce, (self.chain_id, self.signer, nonce))
            if free is None:
                return None
            token = self._fenced(session)
            session.delete(free)
            return self._add_noop(session, nonce, idempotency_key, token)

    def _add_noop(
        self, session: Session, nonce: int, idempotency_key: str, fence_token: int | None = None
    ) -> TxRecord:
        """A 0-value self-transfer record holding `nonce` (gap fill or cancellation)."""
        record = TxRecord(
            fence_token=fence_token,
            idempotency_key=idempotency_key,
            chain_id=self.chain_id,
            signer=self.signer,
            nonce=nonce,
            state=TxState.UNSTARTED,
            route="gap-fill",
            to=self.signer,
            gas_limit=21_000,
        )
        session.add(record)
        session.flush()
        session.expunge(record)
        return record

    def supersede(self, tx_id: int, reason: str) -> TxRecord:
        """Drops a record whose transaction may still land and hands its nonce, without freeing
        it, to a new no-op record (a self-transfer that replaces it at a higher fee)."""
        with Session(self.engine) as session, session.begin():
            self._locked(session)
            old = session.get(TxRecord, tx_id)
            if old is None:
                raise KeyError(f"no transaction {tx_id}")
            assert old.id is not None
            check_transition(old.id, TxState(old.state), TxState.DROPPED)
            old.state, old.reason, old.updated_at = TxState.DROPPED, reason, dt.datetime.now(dt.UTC)
            session.add(old)
            session.flush()
            return self._add_noop(session, old.nonce, f"{old.idempotency_key}:cancel")

    def record_attempt(
        self, tx_id: int, tx_hash: str, max_fee: int, priority_fee: int, target: int | None
    ) -> None:
        """Keeps every signed version of a transaction, as sent (fee bumps, re-targets)."""
        with Session(self.engine) as session, session.begin():
            session.add(
                TxAttempt(
                    tx_id=tx_id,
                    tx_hash=tx_hash,
                    max_fee_per_gas=max_fee,
                    max_priority_fee_per_gas=priority_fee,
                    target_block=target,
                )
            )

    def live_hashes(self) -> list[str]:
        """Hashes of live transactions that were sent (for receipt look-ups before reconcile)."""
        with Session(self.engine) as session:
            return [
                h
                for h in session.exec(
                    select(TxRecord.tx_hash).where(
                        TxRecord.chain_id == self.chain_id,
                        TxRecord.signer == self.signer,
                        col(TxRecord.state).in_([s.value for s in LIVE]),
                    )
                ).all()
                if h
            ]

    def state_counts(self) -> dict[str, int]:
        """Transactions of this signer by state (for the metric)."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(TxRecord.state, func.count())
                .where(TxRecord.chain_id == self.chain_id, TxRecord.signer == self.signer)
                .group_by(TxRecord.state)
            ).all()
            return {str(state): int(n) for state, n in rows}

    # ------------------------------------------------------------------- views

    def get(self, tx_id: int) -> TxRecord | None:
        with Session(self.engine) as session:
            rec = session.get(TxRecord, tx_id)
            if rec is not None:
                session.expunge(rec)
            return rec

    def live_nonces(self) -> list[int]:
        with Session(self.engine) as session:
            return sorted(
                session.exec(
                    select(TxRecord.nonce).where(
                        TxRecord.chain_id == self.chain_id,
                        TxRecord.signer == self.signer,
                        TxRecord.state.in_([s.value for s in LIVE]),  # type: ignore[attr-defined]
                    )
                ).all()
            )

    def next_nonce(self) -> int:
        with Session(self.engine) as session:
            row = session.get(NonceCounter, (self.chain_id, self.signer))
            return row.next_nonce if row else 0


def _pg_insert_ignore(chain_id: int, signer: str) -> object:
    from sqlalchemy.dialects.postgresql import insert

    return (
        insert(NonceCounter.__table__)  # type: ignore[attr-defined]
        .values(chain_id=chain_id, signer=signer, next_nonce=0)
        .on_conflict_do_nothing()
    )

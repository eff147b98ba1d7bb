"""The store's tables. Chain-derived rows are keyed by chain id so one database serves many chains."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from keepers.store.types import Uint256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _u256(**kw: Any) -> Any:
    return Field(default=0, sa_column=Column(Uint256(), nullable=False, **kw))


class Cursor(SQLModel, table=True):
    """Last block a follower has fully applied, per chain and follower name."""

    chain_id: int = Field(primary_key=True)
    name: str = Field(primary_key=True)
    block_number: int
    block_hash: str


class BlockHash(SQLModel, table=True):
    """Recent canonical block hashes, to find the fork point of a reorg."""

    chain_id: int = Field(primary_key=True)
    number: int = Field(primary_key=True)
    hash: str
    parent_hash: str


class StoreRollback(SQLModel, table=True):
    """Each rollback of a chain's events, in order: followers sharing the store (one per keeper
    kind) check for one since their last commit, so none stores a block on top of a store that
    was rolled back below it."""

    id: int | None = Field(default=None, primary_key=True)
    chain_id: int = Field(index=True)
    fork_block: int


class ChainEvent(SQLModel, table=True):
    """Every applied log, once: the key makes re-delivery a no-op."""

    #: A chain's events by block (each block's "already stored?" read, rollbacks, replay); on
    #: block_number alone, SQLite took the key's chain_id prefix and scanned the whole chain.
    __table_args__ = (Index("ix_chainevent_chain_block", "chain_id", "block_number"),)

    chain_id: int = Field(primary_key=True)
    tx_hash: str = Field(primary_key=True)
    log_index: int = Field(primary_key=True)
    block_number: int
    block_hash: str
    address: str
    name: str
    args: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class Order(SQLModel, table=True):
    """An OrderBook order as the events describe it."""

    __table_args__ = (
        Index("ix_order_chain_updated", "chain_id", "updated_block"),
        # The open orders of some kinds (the TWAP and iceberg keepers' read at every block).
        Index("ix_order_chain_kind_status", "chain_id", "kind", "status"),
    )

    chain_id: int = Field(primary_key=True)
    order_id: int = Field(primary_key=True)
    book: str
    owner: str = Field(index=True)
    market: int
    kind: int
    amount_in: int = _u256()
    min_amount_out: int = _u256()
    remaining: int = _u256()
    #: uint32 timestamps on chain (no expiry is 2**32 - 1): past PostgreSQL's INTEGER.
    expiry: int = Field(sa_column=Column(BigInteger(), nullable=False))
    keeper_fee_bps: int
    trigger_or_clip: int = _u256()
    start: int = Field(default=0, sa_column=Column(BigInteger(), nullable=False))
    interval: int = 0
    slices: int = 0
    #: The order's fairness tolerance (bps below the oracle's rate); 0 = the market's.
    tolerance_bps: int = 0
    status: str = Field(index=True)  # open, armed, partially_filled, filled, cancelled, expired
    placed_block: int
    #: First block a keeper found the order executable (or the oracle armed it).
    executable_block: int | None = None
    updated_block: int
    #: Set when a reorg took a fill of this order off the chain (the fork block + 1).
    reorged_block: int | None = None


class Fill(SQLModel, table=True):
    """One OrderFilled event."""

    chain_id: int = Field(primary_key=True)
    tx_hash: str = Field(primary_key=True)
    log_index: int = Field(primary_key=True)
    order_id: int = Field(index=True)
    keeper: str
    amount_in: int = _u256()
    amount_out: int = _u256()
    keeper_fee: int = _u256()
    block_number: int


class Position(SQLModel, table=True):
    """A LendingMarket borrower. Debt here is principal flow; health is read on chain."""

    chain_id: int = Field(primary_key=True)
    market: str = Field(primary_key=True)
    borrower: str = Field(primary_key=True)
    collateral: int = _u256()
    borrowed: int = _u256()
    repaid: int = _u256()
    updated_block: int


class Vault(SQLModel, table=True):
    """A RebalancingVault basket."""

    chain_id: int = Field(primary_key=True)
    vault: str = Field(primary_key=True)
    basket_id: int = Field(primary_key=True)
    owner: str
    tokens: list[str] = Field(sa_column=Column(JSON, nullable=False))
    weights_bps: list[int] = Field(sa_column=Column(JSON, nullable=False))
    drift_threshold_bps: int
    max_slippage_bps: int
    reward_bps: int
    updated_block: int


class NonceCounter(SQLModel, table=True):
    """Next never-used nonce per (chain, signer); the row every allocation locks."""

    chain_id: int = Field(primary_key=True)
    signer: str = Field(primary_key=True)
    next_nonce: int


class FreeNonce(SQLModel, table=True):
    """A nonce below next_nonce that no live transaction holds (its transaction was dropped);
    allocation hands these out first so no gap is left standing."""

    chain_id: int = Field(primary_key=True)
    signer: str = Field(primary_key=True)
    nonce: int = Field(primary_key=True)


class TxRecord(SQLModel, table=True):
    """A transaction we own, with its state (see keepers.tx.states). One row per nonce use."""

    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_tx_idempotency"),
        Index("ix_tx_signer_nonce", "chain_id", "signer", "nonce"),
        # The database itself refuses two live transactions on one nonce.
        Index(
            "uq_tx_live_nonce",
            "chain_id",
            "signer",
            "nonce",
            unique=True,
            sqlite_where=text("state != 'dropped'"),
            postgresql_where=text("state != 'dropped'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str
    chain_id: int
    signer: str
    nonce: int
    state: str = Field(index=True)
    route: str = "bundle"  # bundle, private, public, gap-fill
    to: str | None = None
    data: str = "0x"
    value: int = _u256()
    gas_limit: int = 0
    #: The fees it is signed with (a fee bump updates them): the same signed transaction, byte
    #: for byte, can be derived again, so a crash between send and record loses nothing.
    max_fee_per_gas: int = Field(
        default=0, sa_column=Column(BigInteger(), nullable=False, server_default="0")
    )
    max_priority_fee_per_gas: int = Field(
        default=0, sa_column=Column(BigInteger(), nullable=False, server_default="0")
    )
    tx_hash: str | None = None
    bundle_hash: str | None = None
    target_block: int | None = None
    deadline_block: int | None = None
    included_block: int | None = None
    #: The leader lease token under which the nonce was allocated (None: no election).
    fence_token: int | None = None
    reason: str = ""
    created_at: dt.datetime = Field(default_factory=_now)
    updated_at: dt.datetime = Field(default_factory=_now)


class TxAttempt(SQLModel, table=True):
    """One signed version of a TxRecord as sent (fee bumps and re-targets are new attempts)."""

    id: int | None = Field(default=None, primary_key=True)
    tx_id: int = Field(foreign_key="txrecord.id", index=True)
    tx_hash: str
    max_fee_per_gas: int = _u256()
    max_priority_fee_per_gas: int = _u256()
    target_block: int | None = None
    sent_at: dt.datetime = Field(default_factory=_now)


class ActionLedger(SQLModel, table=True):
    """What one keeper action earned and cost: the economics behind `keepers pnl`.

    Earned is the strategy's valuation (fees, reward or bonus at the oracle price when it
    decided); spent is measured: gas used times the effective gas price from the receipt, plus
    any coinbase payment. Actions that never reached the chain cost nothing and earn nothing.
    """

    __table_args__ = (Index("ix_ledger_keeper_day", "chain_id", "keeper", "strategy", "day"),)

    id: int | None = Field(default=None, primary_key=True)
    chain_id: int
    keeper: str
    strategy: str
    idempotency_key: str
    decided_block: int
    status: str  # included, missed, rejected
    included_block: int | None = None
    tx_hashes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    order_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    earned_wei: int = _u256()
    gas_used: int = 0
    gas_cost_wei: int = _u256()
    coinbase_wei: int = _u256()
    day: dt.date = Field(default_factory=lambda: _now().date())
    created_at: dt.datetime = Field(default_factory=_now)

    @property
    def net_wei(self) -> int:
        return self.earned_wei - self.gas_cost_wei - self.coinbase_wei


class Lease(SQLModel, table=True):
    """Who leads a piece of work (a keeper on a chain) and until when, by the database's clock.
    `token` rises with every change of holder: the fencing token a stale leader cannot forge."""

    scope: str = Field(primary_key=True)
    holder: str
    token: int
    expires_at: float  # seconds since the epoch, database clock


class SchemaVersion(SQLModel, table=True):
    """Applied migrations."""

    version: int = Field(primary_key=True)
    description: str
    applied_at: dt.datetime = Field(default_factory=_now)

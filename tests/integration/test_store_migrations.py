"""Schema migrations on real SQLite and PostgreSQL: a database made by an older version is
brought up to date, and a current one is left alone."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from keepers.ha.lease import Fence, LeaseStore
from keepers.store.engine import make_engine
from keepers.store.migrations import MIGRATIONS, current_version, migrate
from keepers.tx.records import Intent, TxRecords

pytestmark = pytest.mark.integration


def test_a_version_one_database_gains_the_ledger_and_reorg_marker(db_url: str):
    engine = make_engine(db_url)
    assert migrate(engine) == [m.version for m in MIGRATIONS]
    assert migrate(engine) == [], "a second run applies nothing"
    # Turn it back into what version 1 of the package created.
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE actionledger"))
        conn.execute(text('ALTER TABLE "order" DROP COLUMN reorged_block'))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 1"))
    assert current_version(engine) == 1

    assert migrate(engine) == [2, 3, 4, 5, 6, 7, 8, 9]
    insp = inspect(engine)
    assert "actionledger" in insp.get_table_names()
    assert "reorged_block" in {c["name"] for c in insp.get_columns("order")}
    assert current_version(engine) == 9


def test_a_version_two_database_gains_leases_and_fence_tokens(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE lease"))
        conn.execute(text("ALTER TABLE txrecord DROP COLUMN fence_token"))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 2"))
    assert migrate(engine) == [3, 4, 5, 6, 7, 8, 9]
    insp = inspect(engine)
    assert "lease" in insp.get_table_names()
    assert "fence_token" in {c["name"] for c in insp.get_columns("txrecord")}


def test_a_version_three_database_gains_the_order_delta_index(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_order_chain_updated"))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 3"))
    assert "ix_order_chain_updated" not in {i["name"] for i in inspect(engine).get_indexes("order")}
    assert migrate(engine) == [4, 5, 6, 7, 8, 9]
    assert "ix_order_chain_updated" in {i["name"] for i in inspect(engine).get_indexes("order")}


def test_a_version_four_database_gains_the_order_tolerance(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text('ALTER TABLE "order" DROP COLUMN tolerance_bps'))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 4"))
    assert migrate(engine) == [5, 6, 7, 8, 9]
    assert "tolerance_bps" in {c["name"] for c in inspect(engine).get_columns("order")}


def test_a_version_five_database_gains_the_transaction_fees(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE txrecord DROP COLUMN max_fee_per_gas"))
        conn.execute(text("ALTER TABLE txrecord DROP COLUMN max_priority_fee_per_gas"))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 5"))
    assert migrate(engine) == [6, 7, 8, 9]
    assert {"max_fee_per_gas", "max_priority_fee_per_gas"} <= {
        c["name"] for c in inspect(engine).get_columns("txrecord")
    }
    # The columns came back at the end of the table: allocation still fills every field right.
    fence = _Fence(LeaseStore(engine), "scope")
    (rec,) = TxRecords(engine, 1, "0xab", fences=fence).allocate(
        [Intent("k", to="0x01", value=5, gas_limit=50_000, max_fee_per_gas=7, max_priority_fee_per_gas=3)]
    )
    assert (rec.nonce, rec.state, rec.to, rec.value, rec.gas_limit) == (0, "unstarted", "0x01", 5, 50_000)
    assert (rec.max_fee_per_gas, rec.max_priority_fee_per_gas, rec.fence_token) == (7, 3, fence.token)


def test_a_version_six_database_allocates_in_one_statement(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP FUNCTION keepers_allocate"))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 6"))
    assert migrate(engine) == [7, 8, 9]
    assert TxRecords(engine, 1, "0xab").allocate([Intent("k", to=None)])[0].nonce == 0


def test_a_version_seven_database_gains_the_log_of_store_rollbacks(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE storerollback"))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 7"))
    assert migrate(engine) == [8, 9]
    assert "storerollback" in inspect(engine).get_table_names()


def test_a_version_eight_database_reads_a_blocks_events_by_index_not_by_scan(db_url: str):
    """Each block's "already stored?" read is "events of this chain in blocks lo..hi": the
    index must lead with chain_id, else SQLite answers it from the key's chain_id prefix, a
    scan of every event of the chain (what made a block's sync grow with the book)."""
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_chainevent_chain_block"))
        conn.execute(text("DROP INDEX ix_order_chain_kind_status"))
        conn.execute(text("CREATE INDEX ix_chainevent_block_number ON chainevent (block_number)"))
        conn.execute(text("DELETE FROM schemaversion WHERE version > 8"))
    assert migrate(engine) == [9]
    assert {i["name"] for i in inspect(engine).get_indexes("chainevent")} == {"ix_chainevent_chain_block"}
    assert "ix_order_chain_kind_status" in {i["name"] for i in inspect(engine).get_indexes("order")}
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            plan = conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT tx_hash, log_index FROM chainevent"
                    " WHERE chain_id = 1 AND block_number BETWEEN 5 AND 6"
                )
            ).fetchall()
        assert "ix_chainevent_chain_block (chain_id=? AND block_number>? AND block_number<?)" in plan[0][3]


class _Fence:
    """A lease held for the test, as a leader's."""

    def __init__(self, leases: LeaseStore, scope: str) -> None:
        term = leases.acquire(scope, "me", ttl=60)
        assert term is not None
        self.leases, self.scope, self.token = leases, scope, term.token

    def fence(self) -> Fence:
        return Fence(self.leases, "me", ((self.scope, self.token),))

"""kill -9 at every step of a transaction's life (`KEEPERS_CRASH_AT`), on a real keeper
process sending a transfer every block through the local relay: after a restart the signer
goes on sending, no record is left wedged, and the store equals the chain."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from web3 import Web3

from keepers.store.engine import make_engine
from keepers.store.tables import ActionLedger, TxRecord
from keepers.tx.crash import POINTS
from keepers.tx.records import TxRecords
from keepers.tx.states import PENDING, TxState
from keepers_workshop.devnet.anvil import free_port
from tests.helpers.keeper_process import KEEPER, keeper_config, relayed_chain, start_keeper

pytestmark = pytest.mark.integration


def _wait(until, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_step_leaves_nothing_wedged(tmp_path: Path, point: str):
    with relayed_chain(tmp_path) as (anvil, relay):
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        cfg = keeper_config(tmp_path, relay.url, free_port())
        sent = lambda: w3.eth.get_transaction_count(KEEPER.address)  # noqa: E731

        # The third time it reaches the point, the keeper dies there (kill -9, from inside).
        victim = start_keeper(cfg, KEEPERS_CRASH_AT=f"{point}@3")
        try:
            victim.wait(timeout=60)
        finally:
            if victim.poll() is None:
                victim.kill()
        assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
        before = sent()

        keeper = start_keeper(cfg)
        try:
            _wait(lambda: sent() >= before + 4, 60, "the signer goes on sending after the restart")
            head = w3.eth.block_number
            _wait(lambda: w3.eth.block_number >= head + 4, 30, "blocks go on")
        finally:
            keeper.send_signal(signal.SIGTERM)
            _out, err = keeper.communicate(timeout=30)
        assert keeper.returncode == 0, err[-3000:]

        engine = make_engine(f"sqlite:///{tmp_path / 'run.sqlite'}")
        head = w3.eth.block_number
        chain_nonce = w3.eth.get_transaction_count(KEEPER.address)
        records = TxRecords(engine, 31337, KEEPER.address)
        with Session(engine) as s:
            rows = list(s.exec(select(TxRecord).where(TxRecord.signer == KEEPER.address.lower())))
            pending_ledger = s.exec(select(ActionLedger).where(col(ActionLedger.status) == "pending")).all()

        wedged = [r for r in rows if TxState(r.state) in PENDING and (r.target_block or 0) < head - 2]
        assert wedged == [], f"records left pending past their block: {wedged}"
        assert records.gaps() == [], "no nonce gap"
        # The store equals the chain: every nonce below the chain's count is held by exactly one
        # record that is mined, at the block its receipt names.
        mined = [r for r in rows if TxState(r.state) in (TxState.CONFIRMED, TxState.FINALIZED)]
        held = sorted(r.nonce for r in mined)
        odd = [(r.nonce, r.state, r.reason, r.target_block, r.deadline_block, r.idempotency_key)
               for r in sorted(rows, key=lambda r: (r.nonce, r.id or 0))
               if held.count(r.nonce) != 1 and r.nonce < chain_nonce]  # fmt: skip
        assert held == list(range(chain_nonce)), f"one mined record per used nonce: {odd}"
        for r in mined:
            receipt = w3.eth.get_transaction_receipt(r.tx_hash)  # type: ignore[arg-type]
            assert receipt["blockNumber"] == r.included_block
            assert receipt["from"] == KEEPER.address
        unended = [p for p in pending_ledger if p.decided_block < head - 3]
        assert unended == [], "every action's ledger row ended"

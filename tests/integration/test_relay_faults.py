"""Relay faults: the relay down, stalled or answering errors while orders become executable.
A keeper with `flashbots.fallback = "public"` sends by the public mempool after
`fallback_after_blocks` blocks whose bundle no relay took, and goes back to bundles once a
relay answers again; one without a fallback waits and fills once the relay is back. On every
path: each order filled once, never below its limit, no nonce gap, nothing left pending.

Blocks are stepped by the test (keepers_workshop.testing), the relay sits behind a fault proxy of ours
(tests/helpers/fault_proxy.py); the keeper reads the chain from the relay's node port directly,
as a keeper reads its own node while a Flashbots relay is away."""

from __future__ import annotations

import pytest
from sqlmodel import Session, col, select

from keepers.obs import metrics
from keepers.store.tables import ActionLedger, TxRecord
from keepers.tx.routes import PROBE_EVERY_BLOCKS
from keepers.tx.states import PENDING, TxState
from keepers_workshop.testing import Devnet, KeeperHarness
from tests.helpers.fault_proxy import FaultProxy, Mode

pytestmark = pytest.mark.integration

E18 = 10**18
USDC = 10**6
LIMIT = 1_000 * USDC  # far below the market (~2,000): executable as soon as it is placed
FALLBACK_AFTER = 2


def _records(k: KeeperHarness) -> list[TxRecord]:
    assert k.engine is not None
    with Session(k.engine) as session:
        return list(session.exec(select(TxRecord).order_by(col(TxRecord.nonce))).all())


def _ledger(k: KeeperHarness) -> list[ActionLedger]:
    assert k.engine is not None
    with Session(k.engine) as session:
        return list(session.exec(select(ActionLedger)).all())


def _route_of_fill(k: KeeperHarness, tx_hash: str) -> str:
    routes = {r.tx_hash.lower(): r.route for r in _records(k) if r.tx_hash}
    return routes[tx_hash.lower()]


def _step(d: Devnet, k: KeeperHarness) -> int:
    """One block: built by the relay, then handled by the keeper (decided and submitted)."""
    head = d.mine()
    k.wait_synced(head, timeout=30)
    return head


def _place_and_fill(d: Devnet, k: KeeperHarness, blocks: int) -> tuple[int, int, int]:
    """Places an executable order and steps blocks until it is filled: (order, placed block,
    fill block)."""
    oid = d.place("WETH/USDC", "limit", E18, LIMIT)
    placed = d.head
    k.wait_synced(placed, timeout=30)
    for _ in range(blocks):
        _step(d, k)
        fills = d.fills(oid, placed)
        if fills:
            assert len(fills) == 1, f"order {oid} filled twice: {fills}"
            assert fills[0]["args"]["amountOut"] >= LIMIT, "never below the limit"
            return oid, placed, int(fills[0]["blockNumber"])
    raise AssertionError(f"order {oid} (placed in {placed}) not filled within {blocks} blocks")


def _settled(d: Devnet, k: KeeperHarness) -> None:
    """After a couple of quiet blocks every record is decided and no nonce is skipped."""
    for _ in range(3):
        _step(d, k)
    k.wait_idle()
    records = _records(k)
    pending = [(r.nonce, r.state, r.route) for r in records if TxState(r.state) in PENDING]
    assert pending == [], f"records left pending: {pending}"
    used = d.w3.eth.get_transaction_count(d.keeper_account.address)
    mined = sorted(r.nonce for r in records if TxState(r.state) in (TxState.CONFIRMED, TxState.FINALIZED))
    assert mined == list(range(used)), f"mined nonces {mined} vs the chain's count {used}: a gap"
    included = [row for row in _ledger(k) if row.status == "included"]
    keys = [row.idempotency_key for row in included]
    assert len(keys) == len(set(keys)), "an action booked twice"


@pytest.mark.parametrize("fault", ["refuse", "503", "stall", "rpc-error"])
def test_a_relay_outage_falls_back_to_the_public_mempool_and_back(
    keepers_devnet: Devnet, fault: Mode
) -> None:
    d = keepers_devnet
    assert d.relay is not None
    fallback = {"fallback": "public", "fallback_after_blocks": FALLBACK_AFTER}
    with (
        FaultProxy(d.relay.url) as relay,
        d.keeper("limit-stop", "best-execution", flashbots={"relays": [relay.url], **fallback}) as k,
    ):
        gauge = metrics.RELAY_FALLBACK.labels("devnet", "limit-stop")

        # The relay works: a fill by bundle in the next block.
        _oid, placed, filled = _place_and_fill(d, k, blocks=3)
        assert filled == placed + 1
        assert _route_of_fill(k, d.fills(_oid, placed)[0]["transactionHash"].to_0x_hex()) == "bundle"
        assert gauge._value.get() == 0

        # The relay fails: bundles for FALLBACK_AFTER blocks, then the public mempool.
        relay.set(fault)
        oid, placed, filled = _place_and_fill(d, k, blocks=FALLBACK_AFTER + 3)
        assert filled <= placed + FALLBACK_AFTER + 1, "the fallback took over after its blocks"
        tx = d.fills(oid, placed)[0]["transactionHash"].to_0x_hex()
        assert _route_of_fill(k, tx) == "public"
        assert gauge._value.get() == 1, "keepers_relay_fallback says so"
        # While the relay stays away, each new order fills in the next block, publicly.
        oid, placed, filled = _place_and_fill(d, k, blocks=3)
        assert filled == placed + 1

        # The relay is back: a simulation finds it within PROBE_EVERY_BLOCKS; fills go on in
        # the next block all the while, by bundle again once it answered.
        relay.set("pass")
        routes = []
        for _ in range(PROBE_EVERY_BLOCKS + 2):
            oid, placed, filled = _place_and_fill(d, k, blocks=3)
            assert filled == placed + 1, "no block lost on the way back"
            routes.append(_route_of_fill(k, d.fills(oid, placed)[0]["transactionHash"].to_0x_hex()))
            if routes[-1] == "bundle":
                break
        assert routes[-1] == "bundle", f"still not back on bundles: {routes}"
        assert gauge._value.get() == 0
        _settled(d, k)


def test_without_a_fallback_actions_wait_for_the_relay_and_fill_once_it_is_back(
    keepers_devnet: Devnet,
) -> None:
    d = keepers_devnet
    assert d.relay is not None
    with (
        FaultProxy(d.relay.url) as relay,
        d.keeper("limit-stop", "best-execution", flashbots={"relays": [relay.url]}) as k,
    ):
        relay.set("503")
        oid = d.place("WETH/USDC", "limit", E18, LIMIT)
        placed = d.head
        k.wait_synced(placed, timeout=30)
        for _ in range(4):
            _step(d, k)
        assert d.fills(oid, placed) == [], "nothing can land while no relay takes bundles"
        assert all(r.route == "bundle" for r in _records(k)), "no other route without a fallback"
        relay.set("pass")
        for _ in range(3):
            _step(d, k)
            if d.fills(oid, placed):
                break
        fills = d.fills(oid, placed)
        assert len(fills) == 1, f"filled once the relay is back: {fills}"
        assert fills[0]["args"]["amountOut"] >= LIMIT
        _settled(d, k)

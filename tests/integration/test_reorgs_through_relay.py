"""Reorgs while orders are being filled (issue: reliability, reorgs of depth 1 to 10), through the
local relay (it runs `anvil_reorg` alone under its write gate): a real anvil, the relay and a
real limit-stop keeper. A reorg takes the keeper's fill(s) off the chain; the keeper must show
the order reorged back to open, fill it again on the new branch, and end with its store, its
transaction records and its ledger equal to the canonical chain. KEEPERS_DEEP=1 runs every
depth from 1 to 10."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from sqlmodel import Session, select
from web3.types import TxParams, Wei

from keepers.store.tables import ActionLedger, TxRecord
from keepers.tx.records import TxRecords
from keepers.tx.states import MINED, PENDING, TxState
from keepers_workshop.devnet.cluster import CHAINS, ChainEndpoint
from keepers_workshop.devnet.run import ChainRun, _store_mismatches
from keepers_workshop.testing import ORDER_KINDS, Devnet, KeeperHarness

pytestmark = pytest.mark.integration

DEEP = bool(os.environ.get("KEEPERS_DEEP"))
E18 = 10**18
USDC = 10**6
DEPTHS = list(range(1, 11)) if DEEP else [1, 3, 10]
#: Blocks the keeper gets to fill an order again once the reorg is followed: it decides on the
#: first block of the new branch it sees, for the next one (one block of slack).
REFILL_BLOCKS = 2


def _rpc(d: Devnet, method: str, params: list[Any]) -> Any:
    assert d.relay is not None
    body = requests.post(
        d.relay.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=60
    ).json()
    assert "error" not in body, f"{method}: {body['error']}"
    return body["result"]


def _reorg(d: Devnet, depth: int, txs: Sequence[bytes] = ()) -> None:
    """Replaces the last `depth` blocks through the relay (the height stays); the new branch
    carries `txs` in its first block."""
    before = d.w3.eth.get_block("latest")
    _rpc(d, "anvil_reorg", [depth, [["0x" + t.hex(), 0] for t in txs]])
    after = d.w3.eth.get_block("latest")
    assert after["number"] == before["number"], "anvil_reorg keeps the height"
    assert after["hash"] != before["hash"], "the head block was replaced"


def _unrelated_tx(d: Devnet) -> bytes:
    """A deployer's token mint to a bystander: changes nothing the orders depend on."""
    params: TxParams = {
        "from": d.deployer.address,
        "nonce": d.w3.eth.get_transaction_count(d.deployer.address),
        "gas": 200_000,
        "maxFeePerGas": Wei(200 * 10**9),
        "maxPriorityFeePerGas": Wei(10**9),
        "chainId": 31337,
    }
    tx = d.token("USDC").functions.mint(d.traders[4].address, 1).build_transaction(params)
    return bytes(d.deployer.sign_transaction(cast(dict[str, Any], tx)).raw_transaction)


def _status(k: KeeperHarness, order_id: int) -> dict[str, Any]:
    resp = requests.get(f"{k.api_url}/orders/{order_id}", timeout=5)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _fill_blocks(d: Devnet, order_id: int) -> list[int]:
    return [int(f["blockNumber"]) for f in d.fills(order_id)]


def _step(d: Devnet, k: KeeperHarness) -> int:
    """One block, handled by the keeper (followed, settled, decided)."""
    head = d.mine()
    k.wait_synced(head)
    return head


def _place_in_one_block(d: Devnet, count: int, min_out: int) -> list[int]:
    """`count` limit orders of 1 WETH, placed by one trader in one block."""
    trader = d.traders[0]
    for _ in range(count):
        params = (d.deployment.markets["WETH/USDC"], ORDER_KINDS["limit"], E18, min_out, 0, 10, 0, 0, 0, 0, 0)
        d.send(trader, d.book, "placeOrder", params, mine=False)
    block = d.mine()
    placed = d.book.events.OrderPlaced().get_logs(from_block=block, to_block=block)
    ids = sorted(int(e["args"]["id"]) for e in placed)
    assert len(ids) == count, "every order placed in one block"
    return ids


def _assert_consistent(d: Devnet, k: KeeperHarness, orders: list[int]) -> None:
    """The chain, the keeper's store, its transaction records and its ledger agree."""
    assert k.engine is not None
    assert d.relay is not None
    # No order filled twice on the canonical chain, and every one filled in full.
    for oid in orders:
        fills = d.fills(oid)
        assert len(fills) == 1, (
            f"order {oid} filled {len(fills)} times: {[int(f['blockNumber']) for f in fills]}"
        )
        assert int(d.order(oid)[1]) == 0, f"order {oid} still has a remainder on chain"
        status = _status(k, oid)
        assert status["status"] == "filled", status
        assert [f["tx_hash"] for f in status["fills"]] == [
            "0x" + fills[0]["transactionHash"].hex().removeprefix("0x")
        ], "the store's fill is the canonical one"

    # The store equals the chain, order by order (the devnet referee's own check).
    url = k.engine.url.render_as_string(hide_password=False)
    run = ChainRun(ChainEndpoint(CHAINS[0], d.relay.url, Path(), ""), d.deployment)
    assert _store_mismatches(url, run) == []

    # The signer: nothing wedged, no gap, and every nonce the chain used held by one mined record
    # whose transaction is on the canonical chain.
    signer = d.keeper_account.address
    chain_nonce = d.w3.eth.get_transaction_count(signer)
    records = TxRecords(k.engine, 31337, signer)
    assert records.gaps() == []
    with Session(k.engine) as s:
        rows = list(s.exec(select(TxRecord).where(TxRecord.signer == signer.lower())).all())
        ledger = list(s.exec(select(ActionLedger)).all())
    pending = [(r.nonce, r.state, r.reason) for r in rows if TxState(r.state) in PENDING]
    assert pending == [], f"records left pending: {pending}"
    mined = sorted((r for r in rows if TxState(r.state) in MINED), key=lambda r: r.nonce)
    assert [r.nonce for r in mined] == list(range(chain_nonce)), (
        f"chain nonce {chain_nonce}, mined records {[(r.nonce, r.state, r.included_block) for r in mined]}"
    )
    for r in mined:
        assert r.tx_hash is not None
        receipt = d.w3.eth.get_transaction_receipt(r.tx_hash)  # type: ignore[arg-type]
        canonical = d.w3.eth.get_block(receipt["blockNumber"])["hash"]
        assert receipt["blockHash"] == canonical, f"record {r.nonce} is mined off the canonical chain"
        assert r.included_block == receipt["blockNumber"]

    # The ledger books each action once: included exactly when its transaction is canonical.
    included = [e for e in ledger if e.status == "included"]
    fill_txs = {"0x" + f["transactionHash"].hex().removeprefix("0x") for oid in orders for f in d.fills(oid)}
    assert {h.lower() for e in included for h in e.tx_hashes} == {h.lower() for h in fill_txs}, [
        (e.idempotency_key, e.status, e.tx_hashes) for e in ledger
    ]
    assert sum(len(e.order_ids) for e in included) == len(orders), "each order's fill booked once"
    assert not [e for e in ledger if e.status == "pending"], "no action left pending in the ledger"


def _settle(d: Devnet, k: KeeperHarness, blocks: int = 2) -> None:
    """A few empty blocks: what is in flight ends (a missed bundle drops, a nonce is freed)."""
    for _ in range(blocks):
        _step(d, k)
    k.wait_idle()


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_fill_reorged_out_is_shown_reorged_filled_again_and_the_store_equals_the_chain(
    keepers_devnet: Devnet, depth: int
) -> None:
    d = keepers_devnet
    oid = d.place("WETH/USDC", "limit", E18, 2_050 * USDC)  # above the market: not executable yet
    with d.keeper("limit-stop", "best-execution") as k:
        d.swap(d.pools("WETH", "USDC")[0], "USDC", 150_000 * USDC)  # now it is
        executable = d.head
        k.wait_for_bundle(executable + 1)
        filled = _step(d, k)
        k.wait_idle()
        assert _fill_blocks(d, oid) == [filled]
        assert _status(k, oid)["status"] == "filled"
        # The fill sinks to `depth - 1` blocks below the head: a reorg of `depth` takes it.
        for _ in range(depth - 1):
            _step(d, k)

        # The new branch: empty blocks, or (odd depths) one carrying an unrelated transaction.
        _reorg(d, depth, [_unrelated_tx(d)] if depth % 2 else [])
        assert _fill_blocks(d, oid) == [], "the reorg took the fill"
        assert int(d.order(oid)[1]) == E18, "open again on chain"

        # The reorg is followed at the next block: the trader sees the order reorged back to open.
        followed = _step(d, k)
        seen = _status(k, oid)
        assert seen["status"] == "reorged", seen
        assert seen["reorged_block"] == filled
        assert (seen["remaining"], seen["fills"]) == (str(E18), [])

        # Filled again on the new branch, within a couple of blocks.
        for _ in range(REFILL_BLOCKS):
            if _fill_blocks(d, oid):
                break
            _step(d, k)
        refills = _fill_blocks(d, oid)
        assert len(refills) == 1, f"reorg followed at {followed}, fills on the new branch: {refills}"
        assert followed < refills[0] <= followed + REFILL_BLOCKS, (
            f"followed at {followed}, refilled {refills}"
        )
        _settle(d, k)
        _assert_consistent(d, k, [oid])
        assert k.error is None


@pytest.mark.parametrize("confirmations", [0, 12])
@pytest.mark.parametrize("depth", [4, 10] if DEEP else [4])
def test_fills_landing_in_every_block_before_a_reorg_are_all_redone(
    keepers_devnet: Devnet, depth: int, confirmations: int
) -> None:
    """Orders filled one per block (the keeper takes one order a transaction), so the fills sit in
    consecutive blocks right up to the head when the reorg takes them all. With confirmations 0
    the fills' records are finalized when the reorg comes (deeper than `confirmations`), with 12
    they are still confirmed."""
    d = keepers_devnet
    orders = _place_in_one_block(d, depth, 1_900 * USDC)  # executable at once
    params = {"max_orders": 1}
    with d.keeper("limit-stop", "best-execution", params, confirmations=confirmations) as k:
        for _ in range(depth + 2):
            if all(_fill_blocks(d, oid) for oid in orders):
                break
            k.wait_for_bundle(d.head + 1)
            _step(d, k)
        blocks = [b for oid in orders for b in _fill_blocks(d, oid)]
        assert sorted(blocks) == list(range(min(blocks), min(blocks) + depth)), f"one fill a block: {blocks}"
        assert max(blocks) == d.head, "the last fill is the head block"
        k.wait_idle()

        _reorg(d, depth, [_unrelated_tx(d)])
        assert [b for oid in orders for b in _fill_blocks(d, oid)] == [], "the reorg took every fill"

        _step(d, k)
        for oid in orders:
            seen = _status(k, oid)
            assert seen["status"] == "reorged", seen
            assert seen["reorged_block"] == min(blocks)

        for _ in range(depth + REFILL_BLOCKS):
            if all(_fill_blocks(d, oid) for oid in orders):
                break
            _step(d, k)
        assert all(_fill_blocks(d, oid) for oid in orders), {oid: _fill_blocks(d, oid) for oid in orders}
        _settle(d, k)
        _assert_consistent(d, k, orders)
        assert k.error is None

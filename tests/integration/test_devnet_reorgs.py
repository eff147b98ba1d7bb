"""Reorgs the devnet makes itself (issue: reliability, item 0): its users, market and referee
must survive them. `keepers devnet --reorg-every N` replaces the last 1..D blocks through the
relay while the keepers fill; the referee judges the new branch from the fork point (fills
reorged out no longer count, an order executable again must be filled again), the users re-read
their nonces, so prices keep moving and orders keep coming, and the run ends with its summary.
Below it, the referee and the users' sender on a chain stepped by hand: a reorg and a rollback
to a shorter chain. KEEPERS_DEEP=1 runs the devnet longer with reorgs of depth up to 10."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests

from keepers.config.schema import KEEPER_KINDS
from keepers_workshop.devnet.monitor import UNFILLED_AFTER, FillMonitor, Reorg
from keepers_workshop.devnet.public import LOST_AFTER_BLOCKS, PublicSender
from keepers_workshop.testing import Devnet
from tests.integration.test_devnet_main_job import _devnet

pytestmark = pytest.mark.integration

DEEP = bool(os.environ.get("KEEPERS_DEEP"))


def test_reorgs_every_few_blocks_lose_no_order_and_stall_no_user(tmp_path: Path) -> None:
    blocks, every, depth = (160, 8, 10) if DEEP else (40, 8, 3)
    result, tail, code = _devnet(
        tmp_path, "--blocks", str(blocks), "--reorg-every", str(every), "--reorg-depth", str(depth)
    )
    s = result["chains"]["devnet"]
    assert s["reorgs_done"] >= (15 if DEEP else 3), tail
    assert all(1 <= d <= depth for d in s["reorg_depths"]), s["reorg_depths"]
    # The referee follows every reorg that replaced a block it had judged (a depth-1 reorg of
    # a block mined after its last poll replaces nothing it judged).
    assert 1 <= s["reorgs_seen"] <= s["reorgs_done"], s["reorgs"]
    assert s["fills_reorged_out"] > 0, "reorgs took fills off the chain: the run tested something"

    assert s["unfilled_executable"] == [], f"executable orders left unfilled: {s['unfilled_executable']}"
    assert s["fills_below_limit"] == []
    assert s["nonce_gaps"] == {k: [] for k in KEEPER_KINDS}, s["nonce_gaps"]
    assert s["store_mismatches"] == [], "the store equals the canonical chain"
    assert s["keeper_exit_codes"] == dict.fromkeys(KEEPER_KINDS, 0), tail
    assert s["fills"] > 0

    # The users did not stall after the reorgs: orders placed and prices moving in the last
    # third of the run, after the first reorg (a sender that kept counting nonces past a
    # reorged-out transaction sent only future nonces from then on).
    first_reorg = min(r["head"] for r in s["reorgs"])
    placed = {int(b): n for b, n in s["orders_placed_by_block"].items()}
    prices = {int(b): p for b, p in s["price_by_block"].items()}
    last = max(prices)
    last_third = max(last - blocks // 3, first_reorg + 1)
    assert sum(n for b, n in placed.items() if b >= last_third) > 0, placed
    assert len({p for b, p in prices.items() if b >= last_third}) > 2, "prices stopped moving"
    assert result["ok"], tail
    assert code == 0, tail


def _relay(d: Devnet, method: str, params: list[Any]) -> None:
    assert d.relay is not None
    body = requests.post(
        d.relay.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=60
    ).json()
    assert "error" not in body, body


def _fill(d: Devnet, order_id: int, by: int) -> None:
    """Anyone may fill: a trader fills the order through the first WETH/USDC pool."""
    group: tuple[int, list[str], list[int], list[int]] = (
        d.deployment.markets["WETH/USDC"],
        [d.pools("WETH", "USDC")[0]],
        [order_id],
        [],
    )
    filler = d.traders[by]
    d.send(filler, d.book, "executeBatchAtLeast", [group], filler.address, 1)


def test_the_referee_judges_the_new_branch_and_survives_a_shortened_chain(keepers_devnet: Devnet) -> None:
    d = keepers_devnet
    assert d.relay is not None
    mon = FillMonitor(d.relay.url, d.deployment)
    seen: list[Reorg] = []
    mon.on_reorg.append(seen.append)
    order = d.place("WETH/USDC", "limit", 10**18, 1)  # executable at once
    placed = d.head
    d.mine()
    mon.poll()
    assert mon.orders[order].executable_since == placed

    _fill(d, order, by=4)
    mon.poll()
    assert mon.summary.fills == 1
    assert order not in mon.orders

    # The fill's block is replaced by an empty one: the fill no longer counts, the order is
    # open and executable again, and its clock starts at the head the reorg was seen at.
    head = d.head
    _relay(d, "anvil_reorg", [1, []])
    mon.poll()
    assert seen == [Reorg(head=head, fork=head - 1, depth=1, fills_undone=1)]
    assert mon.summary.fills == 0
    assert mon.summary.orders_filled == set()
    assert order in mon.orders
    d.mine()
    mon.poll()
    assert mon.orders[order].executable_since == head, "judged from the reorg's head, not before it"

    _fill(d, order, by=3)
    mon.poll()
    assert mon.summary.fills == 1
    assert mon.summary.latencies == [d.head - head]

    # A node rolled back to a shorter chain than the referee judged (BlockOutOfRangeError for
    # a block past the head): the referee goes back to the fork and does not crash.
    judged = mon.last_block
    _relay(d, "anvil_rollback", [3])
    assert d.head == judged - 3
    assert mon.poll() == []
    assert mon.last_block == d.head
    assert seen[-1].fork == d.head
    assert seen[-1].fills_undone == 1
    assert mon.summary.fills == 0
    assert order in mon.orders

    # Executable again and never filled on this branch: unfilled, judged from the new branch.
    d.mine(UNFILLED_AFTER + 1)
    mon.poll()
    assert mon.last_block == d.head
    summary = mon.finish()
    assert [(m.order_id, m.filled_block) for m in summary.misses] == [(order, None)], summary.misses
    assert summary.misses[0].executable_block > judged - 3
    assert [r.fork for r in summary.reorgs] == [head - 1, judged - 3]


def test_a_user_reuses_the_nonce_of_a_transaction_reorged_out(keepers_devnet: Devnet) -> None:
    d = keepers_devnet
    assert d.relay is not None
    sender = PublicSender(d.relay.url, 31337)
    user = d.traders[-1]
    usdc = d.token("USDC")
    sender.send(user, usdc, "mint", user.address, 1, gas=100_000)
    d.mine()
    chain = int(d.w3.eth.get_transaction_count(user.address))
    _relay(d, "anvil_reorg", [1, []])
    assert d.w3.eth.get_transaction_count(user.address) == chain - 1, "the mint was reorged out"

    # Told of the reorg (the referee tells the devnet's users), it reads the chain again.
    sender.nonce(user.address)  # counts one more, never landed
    sender.forget_nonces()
    assert sender.nonce(user.address) == chain - 1

    # Not told: its lowest outstanding nonce stays off the chain for LOST_AFTER_BLOCKS, and
    # is used again.
    assert sender.nonce(user.address) == chain  # the one after the outstanding chain - 1
    d.mine(LOST_AFTER_BLOCKS)
    assert sender.nonce(user.address) == chain - 1

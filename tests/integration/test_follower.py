"""The chain follower on a real anvil with the real contracts and a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from eth_account import Account
from sqlmodel import Session, func, select
from web3 import AsyncWeb3, Web3

from keepers.chain.artifacts import load_artifact
from keepers.chain.block import Block
from keepers.chain.events import EventDecoder
from keepers.chain.follower import ChainFollower, ChainMoved, _StoreMoved, _unwrapped
from keepers.chain.http import SessionHTTPProvider
from keepers.chain.source import BlockSource
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import ChainEvent, Order, StoreRollback
from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil
from keepers_workshop.devnet.deploy import Deployment, Sender, bind, deploy_platform

pytestmark = pytest.mark.integration

TRADER = Account.from_key(DEFAULT_KEYS[1])
LIMIT = 0


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[Anvil, Deployment]]:
    with Anvil() as a:
        w3 = Web3(Web3.HTTPProvider(a.url))
        dep = deploy_platform(w3, DEFAULT_KEYS[0])
        trader = Sender(w3, DEFAULT_KEYS[1])
        weth = bind(w3, "DevnetToken", dep.tokens["WETH"])
        trader.call(weth, "mint", TRADER.address, 10**24)
        trader.call(weth, "approve", dep.order_book, 2**256 - 1)
        yield a, dep


@pytest.fixture
def fresh(chain: tuple[Anvil, Deployment]) -> Iterator[None]:
    w3 = Web3(Web3.HTTPProvider(chain[0].url))
    snap = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield
    w3.provider.make_request("evm_revert", [snap])  # type: ignore[arg-type]


def _follower(url: str, dep: Deployment, db: str, **kw: Any) -> ChainFollower:
    engine = make_engine(db)
    migrate(engine)
    decoder = EventDecoder(
        [
            (dep.order_book, load_artifact("OrderBook")),
            (dep.lending_market, load_artifact("LendingMarket")),
            (dep.vault, load_artifact("RebalancingVault")),
        ]
    )
    return ChainFollower(AsyncWeb3(SessionHTTPProvider(url)), engine, 31337, decoder, **kw)


def _place_tx(w3: Web3, dep: Deployment, amount: int, nonce: int | None = None) -> bytes:
    book = bind(w3, "OrderBook", dep.order_book)
    params = (dep.markets["WETH/USDC"], LIMIT, amount, 1, 0, 10, 0, 0, 0, 0, 0)
    tx = book.functions.placeOrder(params).build_transaction(
        {
            "from": TRADER.address,
            "nonce": w3.eth.get_transaction_count(TRADER.address) if nonce is None else nonce,
            "gas": 300_000,
            "maxFeePerGas": 100 * 10**9,
            "maxPriorityFeePerGas": 10**9,
            "chainId": 31337,
        }
    )
    return bytes(TRADER.sign_transaction(tx).raw_transaction)


def _place(w3: Web3, dep: Deployment, amount: int) -> None:
    h = w3.eth.send_raw_transaction(_place_tx(w3, dep, amount))
    assert w3.eth.wait_for_transaction_receipt(h)["status"] == 1


def _orders(f: ChainFollower) -> dict[int, int]:
    with Session(f.engine) as s:
        return {o.order_id: o.amount_in for o in s.exec(select(Order)).all()}


def _event_count(f: ChainFollower) -> int:
    with Session(f.engine) as s:
        return int(s.exec(select(func.count()).select_from(ChainEvent)).one())


@pytest.mark.usefixtures("fresh")
def test_events_apply_once_across_restarts(chain, tmp_path):
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    db = f"sqlite:///{tmp_path / 'f.sqlite'}"
    for amount in (1, 2, 3):
        _place(w3, dep, amount * 10**18)
    first = _follower(anvil.url, dep, db, page_size=7)  # small pages: several commits
    result = anyio.run(first.sync)
    assert result.applied >= 3
    count = _event_count(first)
    before = _orders(first)
    assert sorted(before.values())[-3:] == [10**18, 2 * 10**18, 3 * 10**18]

    restarted = _follower(anvil.url, dep, db)
    assert anyio.run(restarted.sync).applied == 0, "a restart resumes from the cursor"
    assert _event_count(restarted) == count
    _place(w3, dep, 4 * 10**18)
    assert anyio.run(restarted.sync).applied == 1
    assert max(_orders(restarted).values()) == 4 * 10**18


@pytest.mark.usefixtures("fresh")
def test_a_consumer_slower_than_the_blocks_gets_the_newest_websocket_head(chain, tmp_path):
    """Heads that arrive while a keeper works on one are old news when it is done: it goes on
    at the chain's head, not a block behind at every step through the backlog."""
    anvil, _dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    f = _follower(anvil.url, _dep, f"sqlite:///{tmp_path / 'slow.sqlite'}")
    got: list[int] = []

    def mine(n: int) -> None:
        for _ in range(n):
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    async def main() -> None:
        async def keep_mining() -> None:
            while True:
                await anyio.to_thread.run_sync(mine, 1)
                await anyio.sleep(0.2)

        with anyio.fail_after(60):
            heads = f.heads(anvil.ws_url, poll_interval=0.1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_mining)  # until the subscription is up and delivers one
                got.append(await heads.__anext__())
                tg.cancel_scope.cancel()
            # The keeper works on that head while six more blocks come.
            await anyio.to_thread.run_sync(mine, 6)
            await anyio.sleep(1)
            got.append(await heads.__anext__())
            got.append(w3.eth.block_number)
            await heads.aclose()

    anyio.run(main)
    first, second, chain_head = got
    assert second == chain_head, f"{second - first} after the first, of {chain_head - first} mined"
    assert second >= first + 6


@pytest.mark.usefixtures("fresh")
def test_websocket_heads_drive_the_block_source(chain, tmp_path):
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    f = _follower(anvil.url, dep, f"sqlite:///{tmp_path / 'ws.sqlite'}")
    seen: list[Block] = []

    async def main() -> None:
        async def consume() -> None:
            async for block in BlockSource(f, ws_url=anvil.ws_url, poll_interval=5):
                seen.append(block)
                if sum(len(b.orders or {}) for b in seen) >= 3:
                    tg.cancel_scope.cancel()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.sleep(0.5)
                for i in range(3):
                    await anyio.to_thread.run_sync(_place, w3, dep, (i + 1) * 10**18)
                    await anyio.sleep(0.3)

    anyio.run(main)

    numbers = [b.number for b in seen]
    assert numbers == sorted(set(numbers)), "one Block per new head, rising"
    placed = {i: row for b in seen for i, row in (b.orders or {}).items()}
    assert sorted(r["amount_in"] for r in placed.values()) == [10**18, 2 * 10**18, 3 * 10**18], (
        "each Block carries the order rows its events wrote"
    )
    assert all(b.timestamp > 0 and b.hash.startswith("0x") for b in seen)


@pytest.mark.usefixtures("fresh")
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_reorg_rolls_back_and_applies_the_new_branch(chain, tmp_path, depth: int):
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    f = _follower(anvil.url, dep, f"sqlite:///{tmp_path / 'r.sqlite'}")
    _place(w3, dep, 7 * 10**18)  # below the fork: must survive
    fork_nonce = w3.eth.get_transaction_count(TRADER.address)
    for i in range(depth):
        _place(w3, dep, (100 + i) * 10**18)  # one order per block, all orphaned by the reorg
    anyio.run(f.sync)
    orphaned = {oid for oid, amt in _orders(f).items() if amt >= 100 * 10**18}
    assert len(orphaned) == depth

    # The new branch replaces the last `depth` blocks and carries one different order.
    new_branch = _place_tx(w3, dep, 55 * 10**18, nonce=fork_nonce)
    w3.provider.make_request("anvil_reorg", [depth, [["0x" + new_branch.hex(), 0]]])  # type: ignore[arg-type]

    result = anyio.run(f.sync)
    assert result.fork_block is not None
    assert result.rolled_back >= depth
    orders = _orders(f)
    assert 7 * 10**18 in orders.values(), "history below the fork is kept"
    assert not any(a >= 100 * 10**18 for a in orders.values()), "orphaned orders are gone"
    assert 55 * 10**18 in orders.values(), "the new branch's order is applied"
    # The new order took the id the first orphan had: the projection follows the chain, not history.
    assert min(orphaned) in orders
    assert orders[min(orphaned)] == 55 * 10**18


def test_a_block_the_node_does_not_have_is_a_retry_not_a_crash(chain, tmp_path):
    """Headers are read in a task group; the ChainMoved that a block past the node's head
    raises must reach the block source as itself, not wrapped in an ExceptionGroup."""
    anvil, dep = chain
    follower = _follower(anvil.url, dep, f"sqlite:///{tmp_path / 's.sqlite'}")
    head = Web3(Web3.HTTPProvider(anvil.url)).eth.block_number
    with pytest.raises(ChainMoved, match=r"block 0x[0-9a-f]+ is not there"):
        anyio.run(follower._headers, range(head, head + 3))


@pytest.mark.usefixtures("fresh")
def test_a_chain_rolled_back_to_a_shorter_branch_is_followed_and_a_lagging_node_is_not_a_reorg(
    chain, tmp_path
):
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    f = _follower(anvil.url, dep, f"sqlite:///{tmp_path / 'short.sqlite'}")
    _place(w3, dep, 7 * 10**18)
    kept = w3.eth.block_number
    _place(w3, dep, 100 * 10**18)
    _place(w3, dep, 101 * 10**18)
    anyio.run(f.sync)
    assert len(_orders(f)) == 3

    # A node behind our cursor answers with a block we already hold: a retry, nothing undone.
    with pytest.raises(ChainMoved, match="a node that lags"):
        anyio.run(f.sync, kept)
    assert len(_orders(f)) == 3

    w3.provider.make_request("anvil_rollback", [2])  # type: ignore[arg-type]
    assert w3.eth.block_number == kept
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # the shorter branch grows
    block = anyio.run(f.sync)
    assert block.fork_block == kept
    assert sorted(_orders(f).values()) == [7 * 10**18], "the orders of the dropped blocks are gone"


def _cancel(w3: Web3, dep: Deployment, order_id: int) -> None:
    book = bind(w3, "OrderBook", dep.order_book)
    h = book.functions.cancelOrder(order_id).transact({"from": TRADER.address})
    assert w3.eth.wait_for_transaction_receipt(h)["status"] == 1


def _store_and_chain(w3: Web3, dep: Deployment, f: ChainFollower) -> tuple[dict[int, int], dict[int, int]]:
    """Each stored order's remaining amount, in the store and on the chain (getOrder)."""
    with Session(f.engine) as s:
        stored = {o.order_id: o.remaining for o in s.exec(select(Order)).all()}
    book = bind(w3, "OrderBook", dep.order_book)
    return stored, {i: book.functions.getOrder(i).call()[1] for i in stored}


def _statuses(f: ChainFollower) -> dict[int, str]:
    with Session(f.engine) as s:
        return {o.order_id: o.status for o in s.exec(select(Order)).all()}


@pytest.mark.usefixtures("fresh")
def test_followers_sharing_a_store_keep_it_equal_to_the_chain_when_one_sees_a_reorg_late(chain, tmp_path):
    """Keeper kinds share one store, each with its own cursor. One that sees a reorg after
    another rolled the store back reads from the fork (it does not roll back again); one
    whose rollback lands after the other stored the new branch (both saw the reorg at once)
    removes blocks the other holds: an event the other commits next must not be folded over
    the rows that rollback removed (a cancel stored, its order re-placed open: the store said
    open what the chain had closed), and the other must read again from the fork."""
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    db = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    early = _follower(anvil.url, dep, db, name="limit-stop")
    late = _follower(anvil.url, dep, db, name="oracle")
    racing = _follower(anvil.url, dep, db, name="twap")
    _place(w3, dep, 7 * 10**18)
    fork = w3.eth.block_number
    fork_nonce = w3.eth.get_transaction_count(TRADER.address)
    _place(w3, dep, 100 * 10**18)  # orphaned
    for f in (early, late, racing):
        anyio.run(f.sync)

    # The new branch: an order one block after the fork, another two blocks after.
    first = _place_tx(w3, dep, 55 * 10**18, nonce=fork_nonce)
    w3.provider.make_request("anvil_reorg", [1, [["0x" + first.hex(), 0]]])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    _place(w3, dep, 56 * 10**18)
    assert anyio.run(early.sync).fork_block == fork
    (placed,) = (i for i, amount in _orders(early).items() if amount == 56 * 10**18)
    assert anyio.run(late.sync).fork_block == fork, "told of the rollback"
    with Session(early.engine) as s:
        assert len(s.exec(select(StoreRollback)).all()) == 1, "the late one read from the fork"

    # The racing one saw the reorg when the early one did; its rollback lands now, removing
    # the new branch the others stored. Before anyone reads it again, a cancel.
    assert racing._rollback(fork)[0] == fork
    _cancel(w3, dep, placed)
    block = anyio.run(early.sync)
    assert block.fork_block == fork, "the early one is told its blocks were rolled back, and reads them again"
    for f in (late, racing):
        anyio.run(f.sync)
    assert _statuses(early)[placed] == "cancelled"
    stored, on_chain = _store_and_chain(w3, dep, early)
    assert stored == on_chain, "the store equals the chain"


@pytest.mark.usefixtures("fresh")
def test_a_page_of_a_replaced_branch_stored_by_a_follower_that_died_is_found_and_rolled_back(chain, tmp_path):
    """A follower reads the old branch, the chain reorgs, and it stores what it read and dies
    before its next sync would see the reorg. The survivor's first page on the new branch
    meets those blocks in the store: it does not write over them, checks the store's recent
    blocks against the chain, rolls them back and reads the new branch, in the same sync."""
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    db = f"sqlite:///{tmp_path / 'stale.sqlite'}"
    survivor = _follower(anvil.url, dep, db, name="limit-stop")
    dying = _follower(anvil.url, dep, db, name="oracle")
    _place(w3, dep, 7 * 10**18)
    fork = w3.eth.block_number
    fork_nonce = w3.eth.get_transaction_count(TRADER.address)
    anyio.run(survivor.sync)
    anyio.run(dying.sync)
    _place(w3, dep, 100 * 10**18)
    _place(w3, dep, 101 * 10**18)
    tip = anyio.run(dying._header, hex(fork + 2))
    stale = anyio.run(dying._fetch, fork + 1, fork + 2, tip)

    new_branch = _place_tx(w3, dep, 55 * 10**18, nonce=fork_nonce)
    w3.provider.make_request("anvil_reorg", [2, [["0x" + new_branch.hex(), 0]]])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    dying._commit(stale)
    assert 101 * 10**18 in _orders(survivor).values(), "the old branch is in the store"

    block = anyio.run(survivor.sync)
    assert block.fork_block == fork, "its first page met the old branch: checked, rolled back, read again"
    amounts = sorted(_orders(survivor).values())
    assert 55 * 10**18 in amounts, amounts
    assert not any(a >= 100 * 10**18 for a in amounts), amounts
    stored, on_chain = _store_and_chain(w3, dep, survivor)
    assert stored == on_chain, "the store equals the chain"


@pytest.mark.usefixtures("fresh")
def test_a_follower_below_another_ones_rollback_is_told_of_it(chain, tmp_path):
    """A keeper's view can hold rows of blocks above its follower's cursor (rows another
    follower stored first): a rollback by another follower tells it too, although its own
    cursor needs no move."""
    anvil, dep = chain
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    db = f"sqlite:///{tmp_path / 'below.sqlite'}"
    behind = _follower(anvil.url, dep, db, name="limit-stop")
    ahead = _follower(anvil.url, dep, db, name="oracle")
    _place(w3, dep, 7 * 10**18)
    fork = w3.eth.block_number
    assert anyio.run(behind.sync).fork_block is None
    _place(w3, dep, 100 * 10**18)
    anyio.run(ahead.sync)
    w3.provider.make_request("anvil_reorg", [1, []])  # type: ignore[arg-type]
    assert anyio.run(ahead.sync).fork_block == fork
    block = anyio.run(behind.sync)
    assert block.fork_block == fork, "told of the rollback: its view reloads from the store"
    assert anyio.run(behind.sync).fork_block is None, "once"


def test_a_commit_and_a_fetch_that_both_find_the_chain_moved_raise_one_chain_moved():
    """The commit of one page and the fetch of the next run together; both can fail on a
    reorg, with different findings. The keeper's block source catches ChainMoved by type: an
    ExceptionGroup of two would end the keeper."""

    async def both() -> None:
        async def fetch() -> None:
            raise ChainMoved("logs and headers disagree")

        async def commit() -> None:  # in a worker thread: not cancelled by the fetch's failure
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
            raise _StoreMoved("the store was rolled back")

        with _unwrapped():
            async with anyio.create_task_group() as tg:
                tg.start_soon(fetch)
                tg.start_soon(commit)

    with pytest.raises(_StoreMoved):
        anyio.run(both)

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
from keepers.chain.follower import ChainFollower, ChainMoved
from keepers.chain.http import SessionHTTPProvider
from keepers.chain.source import BlockSource
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import ChainEvent, Order
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

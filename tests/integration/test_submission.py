"""The transaction manager against a real anvil: bundles through the local relay (one per signer
per block, carried into the next block until their deadline), and the public mempool (fee bumps,
gap fills, no-op replacement at the deadline)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import aiohttp
import anyio
import pytest
from eth_account import Account
from sqlmodel import Session, select
from web3 import AsyncWeb3, Web3

from keepers.chain.http import SessionHTTPProvider
from keepers.obs import metrics
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import ActionLedger, TxAttempt, TxRecord
from keepers.tx.actions import Action, Call
from keepers.tx.fees import FeeEstimator, Fees
from keepers.tx.flashbots import FlashbotsClient
from keepers.tx.manager import Outcome, Status, TxManager
from keepers.tx.records import Intent, Move, TxRecords
from keepers.tx.routes import BundleRoute, MempoolRoute, Sent
from keepers.tx.signer import SignedTx, TxSigner
from keepers.tx.states import TxState
from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil, free_port
from keepers_workshop.relay.server import RelayThread

pytestmark = pytest.mark.integration

KEEPER = Account.from_key(DEFAULT_KEYS[4])
CAROL = Account.from_key(DEFAULT_KEYS[3])
#: The relays' reputation key (a restarted keeper signs its bundles with the same one).
REPUTATION = Account.create()
SINK = "0x000000000000000000000000000000000000dEaD"
GWEI = 10**9
ETH = 10**18


@pytest.fixture
def chain() -> Iterator[Anvil]:
    # A small block gas limit makes "the block was full" easy to arrange.
    with Anvil(extra_args=("--order", "fifo", "--no-mining", "--gas-limit", "100000")) as a:
        yield a


@pytest.fixture
def relay(chain: Anvil) -> Iterator[RelayThread]:
    with RelayThread(chain.url, free_port(), block_time=None) as r:
        yield r


@pytest.fixture
def records(tmp_path) -> TxRecords:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.sqlite'}")
    migrate(engine)
    return TxRecords(engine, 31337, KEEPER.address)


def _block_filler(nonce: int) -> bytes:
    """A better-paying transaction that uses ~89k of the 100k block gas (calldata floor, EIP-7623)."""
    tx = {
        "to": SINK, "value": 0, "data": b"\x01" * 1700, "gas": 90_000, "maxFeePerGas": 200 * GWEI,
        "maxPriorityFeePerGas": 50 * GWEI, "nonce": nonce, "chainId": 31337,
    }  # fmt: skip
    return bytes(CAROL.sign_transaction(tx).raw_transaction)


def _transfer(key: str, value: int = 1) -> Action:
    return Action(
        key, (Call(to=SINK, value=value, gas_limit=21_000),), expected_value_wei=ETH, deadline_blocks=3
    )


async def _rpc(session: aiohttp.ClientSession, url: str, method: str, *params: Any) -> Any:
    async with session.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    ) as r:
        return (await r.json())["result"]


Body = Callable[[TxManager, aiohttp.ClientSession, Web3], Awaitable[None]]


def _bundle_manager(relay: RelayThread, records: TxRecords, session: aiohttp.ClientSession) -> TxManager:
    w3 = AsyncWeb3(SessionHTTPProvider(relay.url))
    return TxManager(
        w3=w3, records=records, signer=TxSigner(KEEPER, 31337), fees=FeeEstimator(w3, max_fee_gwei=100),
        route=BundleRoute(FlashbotsClient([relay.url], REPUTATION, session)), chain="test",
        block_time=1.0,
    )  # fmt: skip


async def _with_bundles(relay: RelayThread, records: TxRecords, body: Body) -> None:
    async with aiohttp.ClientSession() as session:
        await body(_bundle_manager(relay, records, session), session, Web3(Web3.HTTPProvider(relay.url)))


async def _build(session: aiohttp.ClientSession, url: str) -> None:
    await _rpc(session, url, "relay_buildBlock")


async def _pending_for(session: aiohttp.ClientSession, url: str, block: int) -> int:
    pending = await _rpc(session, url, "relay_pendingBundles")
    return sum(int(p["blockNumber"], 16) == block for p in pending)


async def _step(txm: TxManager, sync: Web3, actions: list[Action] | None = None) -> list[Outcome]:
    """One keeper block: settle at the head, then submit (what the loop does)."""
    head = sync.eth.block_number
    ended = await txm.settle(head)
    ts = int(sync.eth.get_block(head)["timestamp"])
    return ended + await txm.submit(actions or [], head, ts)


def _ended(outcomes: list[Outcome], key: str) -> Outcome:
    (o,) = [o for o in outcomes if o.action_key == key and o.status is not Status.SENT]
    return o


def test_bundle_crowded_out_is_carried_into_the_next_block_and_lands(relay: RelayThread, records: TxRecords):
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        head = sync.eth.block_number
        seen.extend(await _step(txm, sync, [_transfer("fill-1")]))
        assert await _pending_for(session, relay.url, head + 1) == 1
        # A better-paying bundle fills block head+1.
        await txm.route.client.send_bundle([_block_filler(0)], head + 1)  # type: ignore[union-attr]
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))
        assert await _pending_for(session, relay.url, head + 2) == 1, "carried into the next block"
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    outcome = _ended(seen, "fill-1")
    assert outcome.status is Status.INCLUDED, outcome
    assert outcome.block == w3.eth.block_number
    assert w3.eth.get_transaction_count(KEEPER.address) == 1
    assert records.live_nonces() == [0]
    assert records.gaps() == []


def test_bundle_that_misses_every_block_frees_its_nonce(relay: RelayThread, records: TxRecords):
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        head = sync.eth.block_number
        seen.extend(await _step(txm, sync, [_transfer("fill-a")]))
        for i, target in enumerate(range(head + 1, head + 4)):
            # Each block is filled by someone paying more.
            await txm.route.client.send_bundle([_block_filler(i)], target)  # type: ignore[union-attr]
            await _build(session, relay.url)
            seen.extend(await _step(txm, sync, [_transfer("fill-b")] if target == head + 3 else None))
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    assert _ended(seen, "fill-a").status is Status.MISSED
    assert _ended(seen, "fill-b").status is Status.INCLUDED
    assert w3.eth.get_transaction_count(KEEPER.address) == 1, "nonce 0 was used once, by the second action"
    assert records.live_nonces() == [0]
    assert records.gaps() == []


class _SlowSigner(TxSigner):
    """A busy machine: the relay builds a block while the keeper signs its first bundle."""

    def __init__(self, relay_url: str) -> None:
        super().__init__(KEEPER, 31337)
        self.relay_url, self.slow = relay_url, True

    async def sign(self, requests: Sequence[tuple[TxRecord, Fees]]) -> list[SignedTx]:
        if self.slow:
            self.slow = False
            async with aiohttp.ClientSession() as session:
                await _build(session, self.relay_url)
        return await super().sign(requests)


class _SlowSend(BundleRoute):
    """A busy machine: the relay builds a block between the keeper's simulation and its send."""

    slow = True

    async def send(self, raws: Sequence[bytes], target: int, replacement_uuid: str) -> Sent:
        if self.slow:
            self.slow = False
            await _rpc(self.client.session, self.client.relays[0], "relay_buildBlock")
        return await super().send(raws, target, replacement_uuid)


def _one_block_fill(key: str) -> Action:
    """Valid for one block, as a fill is (the next block's plan is made from its own prices)."""
    return Action(key, (Call(to=SINK, value=1, gas_limit=21_000),), expected_value_wei=ETH, deadline_blocks=1)


@pytest.mark.parametrize(
    "where", ["while signing", "between simulation and send", "between simulation and send, then restarted"]
)
def test_a_bundle_whose_block_was_built_while_it_was_prepared_goes_for_the_next_block(
    relay: RelayThread, records: TxRecords, where: str
):
    """On a busy machine the block a bundle was made for can be built before the bundle is
    sent. It never had its chance there, so it goes for the next block, deadline included,
    instead of being refused as too late and dropped (a fill missed for every slow step). The
    next block's actions join it in one bundle, also after a restart (read from the store)."""
    seen: list[Outcome] = []
    late = metrics.BUNDLES.labels("test", "late")
    before = late._value.get()

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        if where == "while signing":
            txm.signer = _SlowSigner(relay.url)
        else:
            txm.route = _SlowSend(txm.route.client)  # type: ignore[union-attr]
        head = sync.eth.block_number
        seen.extend(await _step(txm, sync, [_one_block_fill("fill-late")]))
        assert sync.eth.block_number == head + 1, "a block was built while it was prepared"
        assert await _pending_for(session, relay.url, head + 2) == 1, "sent for the next block"
        if where.endswith("restarted"):
            txm = _bundle_manager(relay, records, session)
        # The step at head+1 (its block not built yet): this block's action joins the late
        # bundle in one, which replaces it (one bundle per signer per block).
        seen.extend(await _step(txm, sync, [_one_block_fill("fill-next")]))
        assert await _pending_for(session, relay.url, head + 2) == 1, "one bundle for the block"
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    for key in ("fill-late", "fill-next"):
        outcome = _ended(seen, key)
        assert outcome.status is Status.INCLUDED, outcome
        assert outcome.block == w3.eth.block_number
    assert late._value.get() == before + 1
    assert records.live_nonces() == [0, 1]
    assert records.gaps() == []


def test_a_late_bundle_that_lands_while_the_next_one_is_prepared_is_found_not_dropped(
    relay: RelayThread, records: TxRecords
):
    """Sent late for block T, it joins the next submission for T; T is built (with it) while
    that one is prepared. Its simulation then refuses it (its nonce is used): that is not a
    refusal but a landing. It leaves the bundle unreported, settlement confirms it, and the
    next action goes for T+1 on the next nonce."""
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        txm.route = _SlowSend(txm.route.client)  # type: ignore[union-attr]
        head = sync.eth.block_number
        seen.extend(await _step(txm, sync, [_one_block_fill("fill-late")]))
        assert await _pending_for(session, relay.url, head + 2) == 1
        txm.signer = _SlowSigner(relay.url)  # builds head+2 (with the late bundle) meanwhile
        seen.extend(await _step(txm, sync, [_one_block_fill("fill-next")]))
        assert sync.eth.get_transaction_count(KEEPER.address) == 1, "the late bundle landed"
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    late, nxt = _ended(seen, "fill-late"), _ended(seen, "fill-next")
    assert late.status is Status.INCLUDED, late
    assert nxt.status is Status.INCLUDED, nxt
    assert nxt.block == late.block + 1 == w3.eth.block_number
    assert records.live_nonces() == [0, 1]
    assert records.gaps() == []


def test_a_bundle_refused_as_past_goes_again_without_what_of_it_landed(
    relay: RelayThread, records: TxRecords
):
    """A late bundle X joins the next block's fill F; that block is built (with X's earlier
    send) before the joint bundle is sent, which the relay refuses as past. X landed: it
    leaves the bundle (settlement confirms it), and F goes for the next block."""
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        route = txm.route = _SlowSend(txm.route.client)  # type: ignore[union-attr]
        head = sync.eth.block_number
        seen.extend(await _step(txm, sync, [_one_block_fill("x")]))
        route.slow = True  # builds head+2 (with x) between the next simulation and its send
        seen.extend(await _step(txm, sync, [_one_block_fill("f")]))
        assert sync.eth.get_transaction_count(KEEPER.address) == 1, "x landed"
        assert await _pending_for(session, relay.url, head + 3) == 1, "f went for the next block"
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    x, f = _ended(seen, "x"), _ended(seen, "f")
    assert x.status is Status.INCLUDED, x
    assert f.status is Status.INCLUDED, f
    assert f.block == x.block + 1
    assert records.live_nonces() == [0, 1]
    assert records.gaps() == []


def _valid_until(block: int) -> str:
    """Runtime code that reverts once block.number > `block` (a plan that goes stale)."""
    # PUSH1 block, NUMBER, GT, PUSH1 8, JUMPI, STOP, JUMPDEST, PUSH1 0, DUP1, REVERT
    return "0x60" + f"{block:02x}" + "431160085700" + "5b600080fd"


def test_a_late_bundle_that_its_next_block_refuses_in_part_keeps_the_rest(
    chain: Anvil, relay: RelayThread, records: TxRecords
):
    """Sent late, then simulated for the next block, where one of its actions no longer holds:
    that one is left out (its record, already marked sent, is dropped), the rest goes."""
    seen: list[Outcome] = []
    guard = "0x00000000000000000000000000000000000000C0"

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        txm.route = _SlowSend(txm.route.client)  # type: ignore[union-attr]
        head = sync.eth.block_number
        await _rpc(session, chain.url, "anvil_setCode", guard, _valid_until(head + 1))
        call = Call(to=guard, gas_limit=30_000)
        stale = Action("stale", (call,), expected_value_wei=ETH, deadline_blocks=1)
        seen.extend(await _step(txm, sync, [_one_block_fill("fine"), stale]))
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    assert _ended(seen, "fine").status is Status.INCLUDED
    refused = _ended(seen, "stale")
    assert refused.status is Status.REJECTED, refused
    assert w3.eth.get_transaction_count(KEEPER.address) == 1
    assert records.live_nonces() == [0]
    assert records.gaps() == []


def test_one_signers_actions_of_one_block_land_together(relay: RelayThread, records: TxRecords):
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        head = sync.eth.block_number
        seen.extend(await _step(txm, sync, [_transfer(f"a{i}", value=i + 1) for i in range(3)]))
        assert await _pending_for(session, relay.url, head + 1) == 1, "one bundle, not three"
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    assert {_ended(seen, f"a{i}").status for i in range(3)} == {Status.INCLUDED}
    assert {_ended(seen, f"a{i}").block for i in range(3)} == {w3.eth.block_number}
    assert w3.eth.get_transaction_count(KEEPER.address) == 3


def test_an_action_settled_by_another_process_on_the_signer_is_reported_whole_and_leaves_the_sender(
    relay: RelayThread, records: TxRecords
):
    """Replicas share a signer through the store: whichever settles first reports the action,
    with the orders its sender decided (a busy machine's HA run logged them as null), and the
    ledger keeps the sender's valuation; the sender takes it off its books instead of keeping
    it in flight for good."""
    seen: list[Outcome] = []
    action = replace(_transfer("fill-7"), order_ids=(7, 9), expected_value_wei=ETH + 7)

    async def body(sender: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        other = _bundle_manager(relay, TxRecords(records.engine, 31337, KEEPER.address), session)
        sent = await _step(sender, sync, [action])
        assert [o.status for o in sent] == [Status.SENT]
        assert sender.pending_actions == 1
        await _build(session, relay.url)
        seen.extend(await other.settle(sync.eth.block_number))
        assert await sender.settle(sync.eth.block_number) == [], "reported once, by the one that settled"
        assert sender.pending_actions == 0, "off the sender's books"

    anyio.run(_with_bundles, relay, records, body)
    ended = _ended(seen, "fill-7")
    assert ended.status is Status.INCLUDED
    assert ended.order_ids == (7, 9)
    with Session(records.engine) as session:
        (row,) = session.exec(select(ActionLedger)).all()
    assert (row.status, row.earned_wei, row.order_ids) == ("included", ETH + 7, [7, 9]), "as its sender wrote"


def test_a_refused_action_is_left_out_and_the_rest_keeps_a_run(relay: RelayThread, records: TxRecords):
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        # More value than the keeper owns: the simulation cannot include the middle one.
        actions = [_transfer("ok-1"), _transfer("too-big", value=10**30), _transfer("ok-2")]
        seen.extend(await _step(txm, sync, actions))
        await _build(session, relay.url)
        seen.extend(await _step(txm, sync))

    anyio.run(_with_bundles, relay, records, body)
    w3 = Web3(Web3.HTTPProvider(relay.url))
    refused = _ended(seen, "too-big")
    assert refused.status is Status.REJECTED
    assert "simulation failed" in refused.reason
    assert _ended(seen, "ok-1").status is Status.INCLUDED
    assert _ended(seen, "ok-2").status is Status.INCLUDED
    assert w3.eth.get_transaction_count(KEEPER.address) == 2
    assert records.live_nonces() == [0, 1], "renumbered: no hole where the refused one was"
    assert records.gaps() == []


def test_fee_above_the_action_value_is_refused_before_any_nonce(relay: RelayThread, records: TxRecords):
    seen: list[Outcome] = []

    async def body(txm: TxManager, session: aiohttp.ClientSession, sync: Web3) -> None:
        action = Action("cheap", (Call(to=SINK, gas_limit=21_000),), expected_value_wei=1_000)
        seen.extend(await _step(txm, sync, [action]))

    anyio.run(_with_bundles, relay, records, body)
    o = _ended(seen, "cheap")
    assert o.status is Status.REJECTED
    assert "cap" in o.reason
    assert records.next_nonce() == 0


class _LowballFirst(FeeEstimator):
    """The first quote is below the base fee (the node keeps the tx pending), later ones are real."""

    calls = 0

    async def estimate(self, blocks: int = 10, percentile: float = 50.0) -> Fees:
        real = await super().estimate(blocks, percentile)
        type(self).calls += 1
        return Fees(1, 1) if type(self).calls == 1 else real


def _public(a: Anvil, records: TxRecords, fees: FeeEstimator | None = None) -> tuple[TxManager, Web3]:
    w3 = AsyncWeb3(SessionHTTPProvider(a.url))
    txm = TxManager(
        w3=w3, records=records, signer=TxSigner(KEEPER, 31337),
        fees=fees or FeeEstimator(w3, max_fee_gwei=100), route=MempoolRoute(w3), chain="test",
        block_time=1.0, max_target_blocks=6,
    )  # fmt: skip
    return txm, Web3(Web3.HTTPProvider(a.url))


async def _run_blocks(
    txm: TxManager, sync: Web3, first: list[Action], until: Callable[[list[Outcome]], bool]
) -> list[Outcome]:
    """The loop's steps on every new head of an auto-mining anvil until `until(outcomes)`."""
    seen = await _step(txm, sync, first)
    last = sync.eth.block_number
    with anyio.fail_after(30):
        while not until(seen):
            if sync.eth.block_number > last:
                last = sync.eth.block_number
                seen += await _step(txm, sync)
            await anyio.sleep(0.05)
    return seen


def test_public_route_bumps_fees_until_included(tmp_path):
    with Anvil(block_time=1) as a:
        engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite'}")
        migrate(engine)
        records = TxRecords(engine, 31337, KEEPER.address)
        txm, sync = _public(
            a, records, _LowballFirst(AsyncWeb3(SessionHTTPProvider(a.url)), max_fee_gwei=100)
        )
        action = Action("pub-1", (Call(to=SINK, value=1, gas_limit=21_000),), ETH, deadline_blocks=6)
        seen: list[Outcome] = []

        async def go() -> None:
            seen.extend(
                await _run_blocks(
                    txm,
                    sync,
                    [action],
                    lambda got: any(o.action_key == "pub-1" and o.status is not Status.SENT for o in got),
                )
            )

        anyio.run(go)
        outcome = _ended(seen, "pub-1")
        assert outcome.status is Status.INCLUDED, outcome
        with Session(engine) as s:
            assert len(s.exec(select(TxAttempt)).all()) >= 2, "at least one replacement was sent"
        assert records.live_nonces() == [0]
        assert sync.eth.get_transaction_count(KEEPER.address) == 1


def test_a_gap_is_found_and_filled_so_the_stuck_transaction_lands(tmp_path):
    with Anvil() as a:
        engine = make_engine(f"sqlite:///{tmp_path / 'g.sqlite'}")
        migrate(engine)
        records = TxRecords(engine, 31337, KEEPER.address)
        txm, sync = _public(a, records)
        fees = anyio.run(txm.fees.estimate)
        first, second = records.allocate(
            [
                Intent(
                    k, to=SINK, value=v, gas_limit=21_000, route="public", target_block=1,
                    deadline_block=20, max_fee_per_gas=fees.max_fee_per_gas,
                    max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                )
                for k, v in (("a#0", 1), ("b#0", 2))
            ]
        )  # fmt: skip
        assert (first.nonce, second.nonce) == (0, 1)

        async def go() -> tuple[Any, Any]:
            # Nonce 1 is broadcast; nonce 0's action is abandoned before sending: a gap below it.
            (signed,) = await txm.signer.sign([(second, fees)])
            await txm.w3.eth.send_raw_transaction(signed.raw)
            records.apply([Move(second.id or 0, TxState.UNCONFIRMED, "sent", {"tx_hash": signed.tx_hash})])
            records.apply([Move(first.id or 0, TxState.DROPPED, "action abandoned")])
            report = await txm.maintain(sync.eth.block_number)  # finds the gap and fills it
            await anyio.sleep(0.5)
            return report, await txm.maintain(sync.eth.block_number)

        report, after = anyio.run(go)
        assert report.gaps == [0]
        assert sync.eth.get_transaction_count(KEEPER.address) == 2, "both landed"
        assert second.id in after.confirmed
        assert after.gaps == []


def test_a_public_transaction_past_its_deadline_is_replaced_by_a_no_op(tmp_path):
    with Anvil(block_time=1) as a:
        engine = make_engine(f"sqlite:///{tmp_path / 'n.sqlite'}")
        migrate(engine)
        records = TxRecords(engine, 31337, KEEPER.address)
        txm, sync = _public(a, records)
        txm.route.bump_after_blocks = 100  # type: ignore[union-attr]  # never bump: it stays stuck
        stuck = Action("stuck", (Call(to=SINK, value=1, gas_limit=21_000),), ETH, deadline_blocks=2)
        seen: list[Outcome] = []

        class _Stuck(FeeEstimator):
            async def estimate(self, blocks: int = 10, percentile: float = 50.0) -> Fees:
                return Fees(1, 1)  # below the base fee: it sits in the pool

        txm.fees = _Stuck(txm.w3, max_fee_gwei=100)

        async def go() -> None:
            real = FeeEstimator(txm.w3, max_fee_gwei=100)
            seen.extend(await _step(txm, sync, [stuck]))
            txm.fees = real  # the no-op is priced by the market
            seen.extend(
                await _run_blocks(
                    txm, sync, [], lambda _: sync.eth.get_transaction_count(KEEPER.address) == 1
                )
            )

        anyio.run(go)
        assert _ended(seen, "stuck").status is Status.MISSED
        receipts_to = {
            sync.eth.get_transaction_by_block(sync.eth.block_number - i, 0)["to"]
            for i in range(sync.eth.block_number)
            if sync.eth.get_block(sync.eth.block_number - i)["transactions"]
        }
        assert receipts_to == {KEEPER.address}, (
            "the nonce went to a no-op self-transfer, not the late payment"
        )


def test_a_base_fee_spike_signs_nothing_above_the_cap_and_leaves_no_gap(tmp_path):
    """Gas spike: the base fee jumps from ~1 to 50 gwei between two blocks, ten times the
    configured cap (5 gwei). A transaction sent just before stays pending: no bump and no
    replacement is signed above the cap; an action during the spike is refused before it takes
    a nonce; the no-op replacing the stuck one lands once the base fee falls back, so the
    nonce is used exactly once and no gap is left."""
    cap = 5
    with Anvil(block_time=1) as a:
        engine = make_engine(f"sqlite:///{tmp_path / 'g.sqlite'}")
        migrate(engine)
        records = TxRecords(engine, 31337, KEEPER.address)
        txm, sync = _public(a, records)
        stuck = Action("before-spike", (Call(to=SINK, value=1, gas_limit=21_000),), ETH, deadline_blocks=3)
        during = Action("during-spike", (Call(to=SINK, value=1, gas_limit=21_000),), ETH)
        seen: list[Outcome] = []

        class _Low(FeeEstimator):
            async def estimate(self, blocks: int = 10, percentile: float = 50.0) -> Fees:
                return Fees(1, 1)  # sent under the coming base fee: it sits in the pool

        async def go() -> None:
            txm.fees = _Low(txm.w3, max_fee_gwei=cap)
            seen.extend(await _step(txm, sync, [stuck]))
            answer = sync.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(50 * GWEI)])  # type: ignore[arg-type]
            assert "error" not in answer, answer
            txm.fees = FeeEstimator(txm.w3, max_fee_gwei=cap)
            start = sync.eth.block_number
            with anyio.fail_after(20):
                while sync.eth.block_number <= start:  # the spiked block
                    await anyio.sleep(0.05)
            seen.extend(await _step(txm, sync, [during]))
            last = sync.eth.block_number
            with anyio.fail_after(90):  # 50 -> 5 gwei falls 12.5% a block: ~18 blocks
                while sync.eth.get_transaction_count(KEEPER.address) < 1:
                    if sync.eth.block_number > last:
                        last = sync.eth.block_number
                        seen.extend(await _step(txm, sync))
                    await anyio.sleep(0.05)

        anyio.run(go)
        refused = _ended(seen, "during-spike")
        assert refused.status is Status.REJECTED
        assert "cap" in refused.reason
        assert _ended(seen, "before-spike").status is Status.MISSED, "replaced by a no-op at its deadline"
        assert sync.eth.get_transaction_count(KEEPER.address) == 1, "the nonce used once, no gap"
        assert records.next_nonce() == 1, "the refused action took no nonce"
        with Session(engine) as s:
            signed = [int(t.max_fee_per_gas) for t in s.exec(select(TxAttempt)).all()]
            signed += [int(r.max_fee_per_gas) for r in s.exec(select(TxRecord)).all()]
        assert signed
        assert max(signed) <= cap * GWEI, f"signed above the cap: {max(signed)} wei/gas"

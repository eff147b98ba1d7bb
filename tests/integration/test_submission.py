"""Submission routes against a real anvil: bundles through the local relay, and the public mempool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import anyio
import pytest
from eth_account import Account
from sqlmodel import Session, select
from web3 import AsyncWeb3, Web3

from keepers.chain.http import SessionHTTPProvider
from keepers.devnet.anvil import DEFAULT_KEYS, Anvil, free_port
from keepers.relay.server import RelayThread
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import TxAttempt
from keepers.tx.actions import Action, Call
from keepers.tx.fees import FeeEstimator, Fees
from keepers.tx.flashbots import FlashbotsClient
from keepers.tx.nonces import NonceManager
from keepers.tx.signer import TxSigner
from keepers.tx.states import TxState
from keepers.tx.submit import BundleSubmitter, MempoolSubmitter, Status

pytestmark = pytest.mark.integration

KEEPER = Account.from_key(DEFAULT_KEYS[4])
CAROL = Account.from_key(DEFAULT_KEYS[3])
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
def nonces(tmp_path) -> NonceManager:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.sqlite'}")
    migrate(engine)
    return NonceManager(engine, 31337, KEEPER.address)


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


async def _with_bundle_submitter(
    relay: RelayThread,
    nonces: NonceManager,
    body: Callable[[BundleSubmitter, aiohttp.ClientSession], Awaitable[None]],
) -> None:
    w3 = AsyncWeb3(SessionHTTPProvider(relay.url))
    async with aiohttp.ClientSession() as session:
        sub = BundleSubmitter(
            client=FlashbotsClient([relay.url], Account.create(), session),
            block_time=1.0,
            w3=w3,
            nonces=nonces,
            signer=TxSigner(KEEPER, 31337),
            fees=FeeEstimator(w3, max_fee_gwei=100),
            chain="test",
            poll_interval=0.02,
        )
        await body(sub, session)


async def _wait_pending(session: aiohttp.ClientSession, url: str, block: int) -> None:
    with anyio.fail_after(10):
        while True:
            pending = await _rpc(session, url, "relay_pendingBundles")
            if any(int(p["blockNumber"], 16) == block for p in pending):
                return
            await anyio.sleep(0.02)


def test_bundle_crowded_out_is_retargeted_and_lands(relay: RelayThread, nonces: NonceManager):
    w3 = Web3(Web3.HTTPProvider(relay.url))
    head = w3.eth.block_number
    competitor = _block_filler(0)
    result: dict[str, Any] = {}

    async def body(sub: BundleSubmitter, session: aiohttp.ClientSession) -> None:
        async def run() -> None:
            result["outcome"] = await sub.submit(_transfer("fill-1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await _wait_pending(session, relay.url, head + 1)
            # A better-paying bundle fills block head+1.
            await sub.client.send_bundle([competitor], head + 1)
            await _rpc(session, relay.url, "relay_buildBlock")
            await _wait_pending(session, relay.url, head + 2)
            await _rpc(session, relay.url, "relay_buildBlock")

    anyio.run(_with_bundle_submitter, relay, nonces, body)
    outcome = result["outcome"]
    assert outcome.status is Status.INCLUDED, outcome
    assert outcome.targets == [head + 1, head + 2]
    assert outcome.block == head + 2
    assert w3.eth.get_transaction_count(KEEPER.address) == 1
    assert nonces.live_nonces() == [0]
    assert nonces.gaps() == []


def test_bundle_that_misses_every_block_frees_its_nonce(relay: RelayThread, nonces: NonceManager):
    w3 = Web3(Web3.HTTPProvider(relay.url))
    head = w3.eth.block_number
    result: dict[str, Any] = {}

    async def body(sub: BundleSubmitter, session: aiohttp.ClientSession) -> None:
        async def run() -> None:
            result["missed"] = await sub.submit(_transfer("fill-a"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            for target in range(head + 1, head + 4):
                await _wait_pending(session, relay.url, target)
                # Each block is filled by someone paying more.
                await sub.client.send_bundle([_block_filler(target - head - 1)], target)
                await _rpc(session, relay.url, "relay_buildBlock")
        # The next action reuses the freed nonce and lands.
        async with anyio.create_task_group() as tg:

            async def run2() -> None:
                result["next"] = await sub.submit(_transfer("fill-b"))

            tg.start_soon(run2)
            await _wait_pending(session, relay.url, head + 4)
            await _rpc(session, relay.url, "relay_buildBlock")

    anyio.run(_with_bundle_submitter, relay, nonces, body)
    assert result["missed"].status is Status.MISSED
    assert result["missed"].targets == [head + 1, head + 2, head + 3]
    assert result["next"].status is Status.INCLUDED
    assert w3.eth.get_transaction_count(KEEPER.address) == 1, "nonce 0 was used once, by the second action"
    assert nonces.live_nonces() == [0]
    assert nonces.gaps() == []


def test_failing_simulation_is_rejected_and_frees_the_nonce(relay: RelayThread, nonces: NonceManager):
    result: dict[str, Any] = {}

    async def body(sub: BundleSubmitter, session: aiohttp.ClientSession) -> None:
        # More value than the keeper owns: the simulation cannot include it.
        result["o"] = await sub.submit(_transfer("too-big", value=10**30))

    anyio.run(_with_bundle_submitter, relay, nonces, body)
    assert result["o"].status is Status.REJECTED
    assert "simulation failed" in result["o"].reason
    assert nonces.live_nonces() == []


def test_fee_above_the_action_value_is_refused_before_any_nonce(relay: RelayThread, nonces: NonceManager):
    result: dict[str, Any] = {}

    async def body(sub: BundleSubmitter, session: aiohttp.ClientSession) -> None:
        action = Action("cheap", (Call(to=SINK, gas_limit=21_000),), expected_value_wei=1_000)
        result["o"] = await sub.submit(action)

    anyio.run(_with_bundle_submitter, relay, nonces, body)
    assert result["o"].status is Status.REJECTED
    assert "cap" in result["o"].reason
    assert nonces.next_nonce() == 0


class _LowballFirst(FeeEstimator):
    """The first quote is below the base fee (the node keeps the tx pending), later ones are real."""

    calls = 0

    async def estimate(self, blocks: int = 10, percentile: float = 50.0) -> Fees:
        real = await super().estimate(blocks, percentile)
        type(self).calls += 1
        return Fees(1, 1) if type(self).calls == 1 else real


def test_public_route_bumps_fees_until_included(tmp_path):
    with Anvil(block_time=1) as a:
        engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite'}")
        migrate(engine)
        nm = NonceManager(engine, 31337, KEEPER.address)
        w3 = AsyncWeb3(SessionHTTPProvider(a.url))
        sub = MempoolSubmitter(
            w3=w3,
            nonces=nm,
            signer=TxSigner(KEEPER, 31337),
            fees=_LowballFirst(w3, max_fee_gwei=100),
            chain="test",
            poll_interval=0.05,
        )
        action = Action("pub-1", (Call(to=SINK, value=1, gas_limit=21_000),), ETH, deadline_blocks=6)
        outcome = anyio.run(sub.submit, action)
        assert outcome.status is Status.INCLUDED, outcome
        assert len(outcome.tx_hashes) >= 2, "at least one replacement was sent"
        rec = nm.live_nonces()
        assert rec == [0]
        sync = Web3(Web3.HTTPProvider(a.url))
        assert sync.eth.get_transaction_count(KEEPER.address) == 1
        states = {nm.get(i).state for i in (1,) if nm.get(i)}  # type: ignore[union-attr]
        assert states == {TxState.CONFIRMED}


def test_a_gap_is_found_and_filled_so_the_stuck_transaction_lands(tmp_path):
    with Anvil() as a:
        engine = make_engine(f"sqlite:///{tmp_path / 'g.sqlite'}")
        migrate(engine)
        nm = NonceManager(engine, 31337, KEEPER.address)
        w3 = AsyncWeb3(SessionHTTPProvider(a.url))
        signer = TxSigner(KEEPER, 31337)
        fees = FeeEstimator(w3, max_fee_gwei=100)
        sub = MempoolSubmitter(w3=w3, nonces=nm, signer=signer, fees=fees, chain="test", poll_interval=0.05)
        from keepers.tx.nonces import Intent

        first = nm.allocate(Intent("a", to=SINK, value=1, gas_limit=21_000))
        second = nm.allocate(Intent("b", to=SINK, value=2, gas_limit=21_000))
        assert (first.nonce, second.nonce) == (0, 1)

        async def go() -> tuple[Any, int, Any]:
            # Nonce 1 is broadcast; nonce 0's action is abandoned before sending: a gap below it.
            signed = signer.sign(second, await fees.estimate())
            await w3.eth.send_raw_transaction(signed.raw)
            nm.transition(second.id or 0, TxState.IN_FLIGHT, tx_hash=signed.tx_hash)
            nm.transition(second.id or 0, TxState.UNCONFIRMED)
            nm.release(first.id or 0, "action abandoned")
            report = await sub.reconcile()
            filled = await sub.fill_gaps()
            await anyio.sleep(0.5)
            return report, filled, await sub.reconcile()

        report, filled, after = anyio.run(go)
        assert report.gaps == [0]
        assert filled == 1
        assert Web3(Web3.HTTPProvider(a.url)).eth.get_transaction_count(KEEPER.address) == 2, "both landed"
        assert second.id in after.confirmed
        assert after.gaps == []
        with Session(engine) as s:
            attempts = s.exec(select(TxAttempt)).all()
        assert len(attempts) == 1, "the gap fill's attempt is recorded"

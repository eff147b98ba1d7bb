"""The keeper engine with plugins discovered through entry points, a real anvil behind the local
relay, and a real store; and `keepers run` as a real process (readiness, metrics, SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import requests
from eth_account import Account
from prometheus_client import REGISTRY
from web3 import AsyncWeb3, Web3

from keepers.chain.events import EventDecoder
from keepers.chain.follower import ChainFollower
from keepers.chain.http import SessionHTTPProvider
from keepers.chain.source import BlockSource
from keepers.engine.isolation import IsolatedStrategy
from keepers.engine.loop import KeeperLoop
from keepers.engine.plugins import PluginError, build_strategy, list_plugins
from keepers.engine.strategy import BlockContext
from keepers.obs import metrics
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.tx.fees import FeeEstimator
from keepers.tx.flashbots import FlashbotsClient
from keepers.tx.manager import Status, TxManager
from keepers.tx.records import TxRecords
from keepers.tx.routes import BundleRoute
from keepers.tx.signer import TxSigner
from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil, free_port
from keepers_workshop.relay.server import RelayThread
from tests.helpers.keeper_process import KEEPER, PLUGINS, keeper_config, relayed_chain, start_keeper

pytestmark = pytest.mark.integration


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.fixture
def chain(tmp_path) -> Iterator[tuple[Anvil, RelayThread]]:
    with relayed_chain(tmp_path) as pair:
        yield pair


def _errors(kind: str, strategy: str) -> float:
    value = REGISTRY.get_sample_value(
        "keepers_strategy_errors_total", {"keeper": "limit-stop", "strategy": strategy, "error": kind}
    )
    return value or 0.0


@pytest.mark.usefixtures("plugins")
def test_discovery_lists_source_and_version_and_reports_broken_plugins():
    found = list_plugins()
    good = {p.name: p for p in found if not isinstance(p, PluginError)}
    broken = [str(p) for p in found if isinstance(p, PluginError)]
    assert good["test-transfer"].distribution == "keepers-test-plugins"
    assert good["test-transfer"].version == "0.0.1"
    assert good["test-transfer"].target == "keepers_test_plugins:TransferStrategy"
    assert any("test-not-a-strategy" in b and "not a keepers.engine.strategy.Strategy" in b for b in broken)
    assert any("test-missing-module" in b and "failed to import" in b for b in broken)


@pytest.mark.usefixtures("plugins")
def test_build_strategy_validates_params_and_kind():
    with pytest.raises(PluginError, match=r"params\.value_wei"):
        build_strategy("test-transfer", "limit-stop", {"value_wei": "lots"})
    with pytest.raises(PluginError, match=r"params\.colour.*Extra inputs"):
        build_strategy("test-transfer", "limit-stop", {"colour": "red"})
    with pytest.raises(PluginError, match="serves 'limit-stop', not 'oracle'"):
        build_strategy("test-transfer", "oracle", {})
    with pytest.raises(PluginError, match="no strategy named 'nope'"):
        build_strategy("nope", "limit-stop", {})


def _run_loop(
    anvil: Anvil,
    relay: RelayThread,
    tmp_path: Path,
    strategy_name: str,
    blocks: int,
    isolated: IsolatedStrategy | None = None,
    timeout: float = 0.5,
    until: Callable[[KeeperLoop], bool] = lambda _loop: True,
) -> KeeperLoop:
    """Runs a keeper loop for `blocks` blocks and then until `until` holds (at most 30 s): a
    busy machine may take more blocks to start a worker, never fewer actions."""
    engine = make_engine(f"sqlite:///{tmp_path / 'k.sqlite'}")
    migrate(engine)
    w3 = AsyncWeb3(SessionHTTPProvider(relay.url))
    loop_holder: dict[str, Any] = {}

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            txm = TxManager(
                w3=w3,
                records=TxRecords(engine, 31337, KEEPER.address),
                signer=TxSigner(KEEPER, 31337),
                fees=FeeEstimator(w3, max_fee_gwei=100),
                route=BundleRoute(FlashbotsClient([relay.url], Account.create(), session)),
                chain="test",
                block_time=0.3,
            )
            loop = KeeperLoop(
                kind="limit-stop",
                chain="test",
                chain_id=31337,
                strategy=isolated or build_strategy(strategy_name, "limit-stop", {}),
                strategy_name=strategy_name,
                source=BlockSource(ChainFollower(w3, engine, 31337, EventDecoder([])), poll_interval=0.05),
                txm=txm,
                strategy_timeout=timeout,
                drain_timeout=10,
            )
            loop_holder["loop"] = loop
            with anyio.move_on_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(loop.run)
                    while loop.state.blocks < blocks or not until(loop):
                        await anyio.sleep(0.05)
                    tg.cancel_scope.cancel()
            if isolated is not None:
                await isolated.close()

    anyio.run(main)
    return loop_holder["loop"]


@pytest.mark.usefixtures("plugins")
def test_loop_submits_strategy_actions_and_drains(chain, tmp_path):
    anvil, relay = chain
    loop = _run_loop(
        anvil, relay, tmp_path, "test-transfer", blocks=4,
        until=lambda lp: sum(o.status is Status.INCLUDED for o in lp.state.outcomes) >= 2,
    )  # fmt: skip
    assert loop.state.in_flight == 0, "cancellation drained every submission"
    included = [o for o in loop.state.outcomes if o.status is Status.INCLUDED]
    assert len(included) >= 2
    assert Web3(Web3.HTTPProvider(anvil.url)).eth.get_transaction_count(KEEPER.address) == len(included)


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize(("strategy", "kind"), [("test-raising", "exception"), ("test-hanging", "timeout"),
                                                  ("test-garbage", "invalid")])  # fmt: skip
def test_misbehaving_strategy_is_contained_and_counted(chain, tmp_path, strategy: str, kind: str):
    anvil, relay = chain
    before = _errors(kind, strategy)
    loop = _run_loop(anvil, relay, tmp_path, strategy, blocks=3)
    assert loop.state.blocks >= 3, "the keeper kept following blocks"
    assert _errors(kind, strategy) - before >= 2
    assert loop.state.outcomes == []


def test_keepers_run_is_ready_serves_metrics_and_stops_cleanly_on_sigterm(chain, tmp_path):
    anvil, relay = chain
    port = free_port()
    proc = start_keeper(keeper_config(tmp_path, relay.url, port))
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not (
            ready and w3.eth.get_transaction_count(KEEPER.address) >= 2
        ):
            with contextlib.suppress(requests.ConnectionError):
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert ready, "readyz turned 200"
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "ok"}
        # Inclusion is settled at the block after it: wait for that settlement.
        included = 'keepers_actions_total{chain="local",outcome="included"}'
        deadline = time.monotonic() + 20
        metrics_text = ""
        while included not in metrics_text and time.monotonic() < deadline:
            metrics_text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            time.sleep(0.2)
        assert included in metrics_text
        assert DEFAULT_KEYS[4][2:] not in metrics_text
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert '"keeper stopped"' in err or "keeper stopped" in err
    assert DEFAULT_KEYS[4][2:] not in err, "the signing key never reaches the logs"


def _isolated(relay: RelayThread, name: str, memory_limit_mb: int = 256) -> IsolatedStrategy:
    return IsolatedStrategy(
        name, "limit-stop", {}, rpc_url=relay.url, memory_limit_mb=memory_limit_mb, keeper="limit-stop"
    )


@pytest.mark.usefixtures("plugins")
def test_isolated_strategy_round_trips_actions_that_land(chain, tmp_path):
    anvil, relay = chain
    strategy = _isolated(relay, "test-printing")
    loop = _run_loop(
        anvil, relay, tmp_path, "test-printing", blocks=4, isolated=strategy, timeout=10,
        until=lambda lp: sum(o.status is Status.INCLUDED for o in lp.state.outcomes) >= 2,
    )  # fmt: skip
    included = [o for o in loop.state.outcomes if o.status is Status.INCLUDED]
    assert len(included) >= 2, "actions came back from the worker and landed"
    assert strategy.restarts == 0, "printing to stdout does not break the worker's protocol"


@pytest.mark.usefixtures("plugins")
def test_every_isolated_worker_gets_its_sync_state_before_its_first_block(chain, tmp_path, capsys):
    """The plugin raises on a block before its sync_state, and its worker dies at its second
    block: each replacement, a fresh instance, must be warmed too."""
    anvil, relay = chain
    strategy = _isolated(relay, "test-warming")
    loop = _run_loop(
        anvil, relay, tmp_path, "test-warming", blocks=3, isolated=strategy, timeout=10,
        until=lambda lp: sum(o.status is Status.INCLUDED for o in lp.state.outcomes) >= 2,
    )  # fmt: skip
    assert sum(o.status is Status.INCLUDED for o in loop.state.outcomes) >= 2
    assert strategy.restarts >= 1, "a worker died and was replaced"
    captured = capsys.readouterr()
    assert "strategy raised" in captured.out + captured.err, "the dead worker was reported"
    assert "before sync_state" not in captured.out + captured.err


@pytest.mark.usefixtures("plugins")
def test_a_worker_slower_to_start_than_a_block_is_waited_for_not_restarted(chain, tmp_path):
    """Under load a worker may need longer than one block's timeout to start: killing it then
    would start the next one just as cold, block after block, and the keeper would never act."""
    anvil, relay = chain
    strategy = _isolated(relay, "test-slow-start")
    loop = _run_loop(
        anvil, relay, tmp_path, "test-slow-start", blocks=3, isolated=strategy, timeout=0.5,
        until=lambda lp: sum(o.status is Status.INCLUDED for o in lp.state.outcomes) >= 1,
    )  # fmt: skip
    assert any(o.status is Status.INCLUDED for o in loop.state.outcomes), "it acted once started"
    assert strategy.restarts == 0, "the starting worker was left to start"


def _hanging_sync(
    anvil: Anvil, relay: RelayThread, tmp_path: Path, *, sync_timeout: float, strategy_timeout: float
) -> tuple[KeeperLoop, IsolatedStrategy]:
    """The test-hanging-sync plugin isolated, its warm-up cut off after `sync_timeout`, run
    until one of its actions landed."""
    strategy = IsolatedStrategy(
        "test-hanging-sync", "limit-stop", {}, rpc_url=relay.url, memory_limit_mb=256,
        sync_timeout=sync_timeout, keeper="limit-stop",
    )  # fmt: skip
    loop = _run_loop(
        anvil, relay, tmp_path, "test-hanging-sync", blocks=3, isolated=strategy, timeout=strategy_timeout,
        until=lambda lp: sum(o.status is Status.INCLUDED for o in lp.state.outcomes) >= 1,
    )  # fmt: skip
    return loop, strategy


def _sync_errors() -> float:
    return metrics.STRATEGY_ERRORS.labels("limit-stop", "test-hanging-sync", "sync_state")._value.get()


@pytest.mark.usefixtures("plugins")
def test_a_warm_up_that_never_ends_is_cut_off_and_the_strategy_runs_cold(chain, tmp_path):
    anvil, relay = chain
    before = _sync_errors()
    loop, strategy = _hanging_sync(anvil, relay, tmp_path, sync_timeout=1, strategy_timeout=10)
    assert any(o.status is Status.INCLUDED for o in loop.state.outcomes), "it ran cold"
    assert strategy.restarts == 0, "a stuck warm-up is the plugin's, not a dead worker"
    assert _sync_errors() == before + 1, "counted once, by the keeper loop that awaited it"


@pytest.mark.usefixtures("plugins")
def test_a_warm_up_that_fails_after_sync_state_returned_is_counted(chain, tmp_path):
    """sync_state() waits only within the keeper's budget (5x a 0.2 s strategy timeout here);
    the warm-up, cut off in the worker at 3 s, fails while a block waits for it: still counted."""
    anvil, relay = chain
    before = _sync_errors()
    loop, strategy = _hanging_sync(anvil, relay, tmp_path, sync_timeout=3, strategy_timeout=0.2)
    assert any(o.status is Status.INCLUDED for o in loop.state.outcomes), "it ran cold"
    # One per warm-up: a worker replaced for a late answer under load is warmed (and fails) again.
    assert _sync_errors() >= before + 1
    assert _sync_errors() <= before + 1 + strategy.restarts


@pytest.mark.usefixtures("plugins")
def test_a_call_cancelled_between_ready_and_warm_up_leaves_the_worker_usable(chain):
    """The worker's "ready" is in the pipe; a block whose scope is cancelled already reads it
    without yielding and is stopped before the warm-up frame goes out: the next call must send
    it, not wait for a second "ready" that never comes."""
    _anvil, relay = chain
    strategy = _isolated(relay, "test-transfer")
    ctx = BlockContext(chain="test", chain_id=31337, number=1, timestamp=0)

    async def main() -> None:
        try:
            await strategy._started(ctx)
            await anyio.sleep(5)  # long enough for "ready" on all but a crawling machine
            with anyio.CancelScope() as scope:
                scope.cancel()
                await strategy.on_block(ctx)
            with anyio.fail_after(60):
                actions = await strategy.on_block(replace(ctx, number=2))
            assert [a.idempotency_key for a in actions] == ["transfer:31337:2"]
            assert strategy.restarts == 0
        finally:
            await strategy.close()

    anyio.run(main)


@pytest.mark.usefixtures("plugins")
def test_a_keeper_stopping_mid_call_kills_its_worker_and_starts_no_other(chain):
    _anvil, relay = chain
    strategy = _isolated(relay, "test-hanging")
    ctx = BlockContext(chain="test", chain_id=31337, number=1, timestamp=0)

    async def call() -> None:
        with anyio.fail_after(600):  # a deadline, as the guard sets one, far off
            await strategy.on_block(ctx)

    async def main() -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(60):
                    while strategy._proc is None or strategy._phase != "up":
                        await anyio.sleep(0.05)
                await anyio.sleep(0.2)  # the worker holds the block now
                tg.cancel_scope.cancel()  # no deadline passed: the keeper is stopping
            assert strategy._proc is None, "the worker was killed"
            assert strategy.restarts == 0, "stopping is not a worker failure"
        finally:
            await strategy.close()

    anyio.run(main)


@pytest.mark.usefixtures("plugins")
def test_isolated_strategy_that_never_yields_is_killed_and_the_keeper_goes_on(chain, tmp_path):
    anvil, relay = chain
    before = _errors("timeout", "test-spinning")
    strategy = _isolated(relay, "test-spinning")
    # A worker that comes up within a block is not blamed for that block: every other late
    # block replaces one.
    loop = _run_loop(anvil, relay, tmp_path, "test-spinning", blocks=5, isolated=strategy, timeout=1.5)
    assert loop.state.blocks >= 3, "the keeper kept following blocks"
    assert _errors("timeout", "test-spinning") - before >= 2
    assert strategy.restarts >= 2, "each late worker was killed and replaced"


@pytest.mark.usefixtures("plugins")
def test_isolated_strategy_over_its_memory_limit_is_restarted(chain, tmp_path):
    anvil, relay = chain
    before = _errors("exception", "test-leaking")
    strategy = _isolated(relay, "test-leaking", memory_limit_mb=256)
    loop = _run_loop(anvil, relay, tmp_path, "test-leaking", blocks=12, isolated=strategy, timeout=10)
    assert loop.state.blocks >= 12
    assert _errors("exception", "test-leaking") - before >= 1, "the out-of-memory worker was counted"
    assert strategy.restarts >= 1

"""Builds one keeper process from settings, in one place, and runs it until SIGTERM/SIGINT.

Everything is passed by constructor; nothing here is a module-level singleton, so a test can
build the same keeper against a temporary database and a local chain.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import structlog
from eth_account import Account
from sqlalchemy import Engine, text
from web3 import AsyncWeb3

from keepers.chain.artifacts import load_artifact
from keepers.chain.events import EventDecoder
from keepers.chain.follower import ChainFollower
from keepers.chain.rpc_pool import RpcPool
from keepers.chain.source import BlockSource
from keepers.config.contracts import ContractAddresses, contract_addresses
from keepers.config.schema import ChainSettings, Settings, SubmissionMode
from keepers.engine.candidates import candidates_for
from keepers.engine.isolation import IsolatedStrategy
from keepers.engine.loop import KeeperLoop
from keepers.engine.market import SnapshotReader
from keepers.engine.plugins import build_strategy
from keepers.engine.strategy import Strategy
from keepers.ha.elector import LeaderElector
from keepers.ha.lease import LeaseStore
from keepers.ha.shards import ShardSet
from keepers.obs import metrics
from keepers.obs.health import bound_port, make_health_app, serve
from keepers.obs.order_api import make_order_api, onchain_markets
from keepers.store.engine import make_engine
from keepers.store.ledger import Ledger
from keepers.store.migrations import migrate
from keepers.tx.fees import FeeEstimator
from keepers.tx.flashbots import FlashbotsClient
from keepers.tx.manager import TxManager
from keepers.tx.records import TxRecords
from keepers.tx.remote_signer import RemoteSigner
from keepers.tx.routes import BundleRoute, MempoolRoute, RelayFallback, Route
from keepers.tx.signer import SignerError
from keepers.tx.signer_process import SignerProcess

log = structlog.get_logger("runtime")


class StartError(RuntimeError):
    """The keeper cannot start on what a valid config points at (`keepers run` exits 1)."""


def stale_after(chain: ChainSettings) -> float:
    """Seconds without a new head after which a keeper says it is not ready."""
    return max(5 * chain.block_time, 10.0)


def poll_interval(chain: ChainSettings) -> float:
    return chain.poll_interval or max(0.05, chain.block_time / 4)


def event_decoder(addrs: ContractAddresses) -> EventDecoder:
    pairs = [
        (addrs.order_book, "OrderBook"),
        (addrs.lending_market, "LendingMarket"),
        (addrs.vault, "RebalancingVault"),
        (addrs.oracle, "PriceOracle"),
    ]
    return EventDecoder((a, load_artifact(name)) for a, name in pairs if a)


@dataclass
class Built:
    loop: KeeperLoop
    engine: Engine
    w3: AsyncWeb3[Any]
    chain: ChainSettings
    elector: LeaderElector | ShardSet
    #: The signer process this keeper started (None: a signer at signer_url).
    signer: SignerProcess | None = None

    async def run(self, until: Callable[[], Awaitable[None]]) -> None:
        """Runs the keeper, its lease elector alongside, until `until` returns; the loop then
        drains, and only after that is the lease handed over, so a standby never overlaps
        this replica's last bundles."""
        await self.elector.step()  # a lone replica leads from its first block
        async with anyio.create_task_group() as election:
            election.start_soon(self.elector.run)
            if self.signer is not None:
                election.start_soon(self.signer.watch)  # its death ends the keeper
            async with anyio.create_task_group() as tg:

                async def stop() -> None:
                    await until()
                    tg.cancel_scope.cancel()

                tg.start_soon(stop)
                await self.loop.run()
            election.cancel_scope.cancel()


async def start_signer(
    settings: Settings, name: str, chain_id: int, stack: AsyncExitStack, child: SignerProcess | None = None
) -> tuple[RemoteSigner, SignerProcess | None]:
    """The keeper's signer: the one at its `signer_url`, else a signer process of its own
    started from its key's reference (`child`, if `keepers run` spawned it already). Either
    way this process never holds the key."""
    child = child or SignerProcess.of_keeper(settings, name)
    if child is None:
        url, _key = settings.signer_of(name)
        assert url is not None
        signer = RemoteSigner(url, chain_id)
        stack.push_async_callback(signer.close)
        for wait in (0.5, 1, 2, 4, 8, 0):  # a sidecar starting beside us: wait for it, then fail
            try:
                await signer.connect()
                break
            except SignerError as exc:
                if not wait:
                    raise
                log.warning("signer not answering yet", url=url, error=str(exc), retry_in=wait)
                await anyio.sleep(wait)
        return signer, None
    stack.callback(child.close)
    signer = RemoteSigner(child.url, chain_id)
    stack.push_async_callback(signer.close)
    await child.start(signer)
    return signer, child


async def build_keeper(
    settings: Settings, name: str, stack: AsyncExitStack, signer_child: SignerProcess | None = None
) -> Built:
    """The keeper configured as `[keepers.<name>]` (its name is its kind unless `kind` is set)."""
    if name not in settings.keepers:
        raise ValueError(
            f"keeper {name!r} is not in the config (configured: {', '.join(settings.keepers) or 'none'})"
        )
    ks = settings.keepers[name]
    if not ks.enabled:
        raise ValueError(f"keepers.{name}.enabled = false: this keeper is switched off in the config")
    kind = settings.kind_of(name)
    chain = settings.chains[ks.chain]
    # The signer first: strategy plugins are loaded after any key variable has left this
    # process's environment, and the key itself is only ever in the signer's process.
    signer, signer_child = await start_signer(settings, name, chain.chain_id, stack, signer_child)
    engine = make_engine(settings.database_url)
    await anyio.to_thread.run_sync(migrate, engine)
    strategy: Strategy = build_strategy(ks.strategy, kind, ks.params)  # params are checked here, once
    if ks.isolation == "process":
        isolated = IsolatedStrategy(
            ks.strategy, kind, ks.params, rpc_url=chain.rpc[0].url, memory_limit_mb=ks.memory_limit_mb,
            sync_timeout=ks.strategy_timeout * 5,  # as the keeper loop gives an in-process one
            keeper=name,
        )  # fmt: skip
        stack.push_async_callback(isolated.close)
        strategy = isolated

    pool = RpcPool([e.url for e in chain.rpc], rate_limits=[e.rate_limit for e in chain.rpc], chain=ks.chain)
    stack.push_async_callback(pool.disconnect)
    w3: AsyncWeb3[Any] = AsyncWeb3(pool)
    chain_id = int(await w3.eth.chain_id)
    if chain_id != chain.chain_id:
        raise StartError(f"chains.{ks.chain}: RPC reports chain id {chain_id}, config says {chain.chain_id}")

    addrs = contract_addresses(chain)
    follower = ChainFollower(
        w3, engine, chain_id, event_decoder(addrs), name=name, chain_label=ks.chain,
        page_size=chain.log_page_size,
    )  # fmt: skip
    leases, scope, hs = LeaseStore(engine), f"{chain_id}/{name}", settings.ha
    elector: LeaderElector | ShardSet
    if ks.shards:
        elector = ShardSet(
            leases, scope, ks.shards, lease_seconds=hs.lease_seconds, renew_seconds=hs.renew_seconds,
            chain=ks.chain, keeper=name,
        )  # fmt: skip
    else:
        elector = LeaderElector(
            leases, scope, lease_seconds=hs.lease_seconds, renew_seconds=hs.renew_seconds,
            chain=ks.chain, keeper=name,
        )  # fmt: skip
    route: Route
    fallback: RelayFallback | None = None
    max_target_blocks = 3
    if chain.submission is SubmissionMode.FLASHBOTS:
        assert chain.flashbots is not None
        session = await stack.enter_async_context(aiohttp.ClientSession())
        reputation = Account.from_key(chain.flashbots.reputation_key.resolve())
        if reputation.address == signer.address:
            raise ValueError(f"chains.{ks.chain}.flashbots.reputation_key must not be the funds key")
        # A bundle is for one block: a relay that cannot answer within a fraction of it is down
        # for this block (three tries, then the fallback counts it).
        timeout = min(5.0, max(0.25, chain.block_time / 4))
        client = FlashbotsClient(
            [str(u) for u in chain.flashbots.relays], reputation, session, timeout=timeout, backoff=0.05
        )
        route = BundleRoute(client, builders=chain.flashbots.builders)
        max_target_blocks = chain.flashbots.target_blocks
        if chain.flashbots.fallback == "private":
            assert chain.private_rpc is not None
            private = MempoolRoute(AsyncWeb3(RpcPool([chain.private_rpc])), private=True)
            fallback = RelayFallback(private, chain.flashbots.fallback_after_blocks)
        elif chain.flashbots.fallback == "public":
            fallback = RelayFallback(MempoolRoute(w3), chain.flashbots.fallback_after_blocks)
    elif chain.submission is SubmissionMode.PRIVATE:
        assert chain.private_rpc is not None
        route = MempoolRoute(AsyncWeb3(RpcPool([chain.private_rpc])), private=True)
    else:
        route = MempoolRoute(w3)
    txm = TxManager(
        w3=w3,
        records=TxRecords(engine, chain_id, signer.address, fences=elector),
        signer=signer,
        fees=FeeEstimator(w3, chain.max_fee_gwei),
        route=route,
        chain=ks.chain,
        confirmations=chain.confirmations,
        max_target_blocks=max_target_blocks,
        block_time=chain.block_time,
        builder_tip=addrs.builder_tip,
        keeper=name,
        strategy=ks.strategy,
        fallback=fallback,
    )

    loop = KeeperLoop(
        kind=kind,
        name=name,
        chain=ks.chain,
        chain_id=chain_id,
        strategy=strategy,
        strategy_name=ks.strategy,
        source=BlockSource(
            follower, ws_url=chain.ws_url, poll_interval=poll_interval(chain), block_time=chain.block_time
        ),
        txm=txm,
        candidates=candidates_for(engine, chain_id, kind),
        snapshots=SnapshotReader(w3, list(addrs.pools), addrs.oracle, addrs.order_book),
        keeper_address=signer.address,
        contracts=addrs.as_dict(),
        strategy_timeout=ks.strategy_timeout,
        drain_timeout=settings.drain_timeout,
        ledger=Ledger(engine),
        leader=elector if isinstance(elector, LeaderElector) else None,
        shards=elector if isinstance(elector, ShardSet) else None,
    )
    return Built(loop, engine, w3, chain, elector, signer_child)


async def run_keeper(settings: Settings, name: str, signer_child: SignerProcess | None = None) -> None:
    """Runs the keeper `[keepers.<name>]` until SIGTERM or SIGINT, then drains and returns."""
    async with AsyncExitStack() as stack:
        built = await build_keeper(settings, name, stack, signer_child)

        async def ready() -> tuple[bool, str]:
            try:
                await anyio.to_thread.run_sync(_ping, built.engine)
            except Exception as exc:  # noqa: BLE001 - any failure is "not ready"
                return False, f"database: {exc.__class__.__name__}"
            if built.loop.state.draining:
                return False, "draining"
            if built.loop.state.last_block < 0:
                return False, "not synced yet"
            # A node that stalls looks synced ("0 behind" its own stale head): the head's age
            # says it. Unready, a Service stops sending this replica order-API traffic.
            age, stale = built.loop.source.follower.head_age(), stale_after(built.chain)
            if age > stale:
                return False, f"no new head for {age:.0f}s (stale after {stale:.0f}s)"
            behind = metrics.BLOCKS_BEHIND.labels(built.loop.chain)._value.get()
            role = "leader" if built.elector.is_leader else "standby"
            if isinstance(built.elector, ShardSet):
                role = f"{len(built.elector.held)} shard(s) of {built.elector.shards}"
            return (behind <= 5, f"{int(behind)} blocks behind head; {role}")

        runner = await serve(make_health_app(ready), settings.health_port or settings.metrics_port)
        stack.push_async_callback(runner.cleanup)
        markets = onchain_markets(built.w3, built.loop.contracts.get("order_book"))
        api = make_order_api(built.engine, built.loop.chain_id, settings.order_api, markets)
        api_runner = await serve(api, settings.order_api.port)
        stack.push_async_callback(api_runner.cleanup)
        log.info("order API serving", port=bound_port(api_runner))
        loop = built.loop
        log.info("keeper started", keeper=name, kind=loop.kind, chain=loop.chain, strategy=loop.strategy_name)

        async def signalled() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    log.info("stopping", signal=sig.name if hasattr(sig, "name") else sig)
                    return

        await built.run(signalled)
        log.info("keeper stopped", keeper=name, in_flight=built.loop.state.in_flight)


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))

"""`keepers devnet`: the whole system on one machine. anvil mines through the local relay
every `block_time`, the platform is deployed and seeded, six keeper processes run from a
config file written here, simulated traders and a moving market keep them busy, and a referee
(keepers.devnet.monitor) judges every fill. `--blocks N` runs N blocks and exits with a
summary, non-zero if an executable order was left unfilled, a fill broke its limit, a nonce
gap was left, or a keeper did not exit cleanly. Fills later than the next block are listed
with the reason the referee sees.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import requests
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from rich.console import Console
from web3 import Web3

from keepers.config.schema import KEEPER_KINDS
from keepers.devnet.anvil import Anvil, anvil_key
from keepers.devnet.cluster import ACCOUNTS, Cluster, keeper_address, write_config
from keepers.devnet.deploy import deploy_platform, write_deployment
from keepers.devnet.market import MarketDriver
from keepers.devnet.monitor import FillMonitor
from keepers.devnet.public import PublicSender, account
from keepers.devnet.traders import TraderSim
from keepers.devnet.view import LiveView, bundle_totals, plain_line, summary_table
from keepers.store.engine import make_engine
from keepers.tx.nonces import NonceManager

log = structlog.get_logger("devnet")

TRADER_KEYS = (1, 2, 3, 4, 5, 6)
MARKET_KEY = 7


@dataclass(frozen=True)
class Options:
    workdir: Path
    block_time: float = 1.0
    blocks: int | None = None
    plain: bool = False
    seed: int = 7
    metrics_snapshot: Path | None = None
    summary_json: Path | None = None
    orders_per_block: int = 2


def _web3(url: str) -> Web3:
    # An explicit session: web3's shared session cache is not needed here (see keepers.chain.http).
    return Web3(Web3.HTTPProvider(url, session=requests.Session()))


def run_devnet(opts: Options) -> int:
    console = Console()
    plain = opts.plain or not console.is_terminal
    workdir = opts.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("keepers.sqlite*"):
        stale.unlink()
    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    with Anvil(extra_args=("--order", "fifo", "--accounts", str(ACCOUNTS))) as anvil:
        w3 = _web3(anvil.url)
        started = time.monotonic()
        dep = deploy_platform(w3, anvil_key(0), updaters=(keeper_address("oracle"),))
        deployment = workdir / "deployment.json"
        write_deployment(dep, deployment)
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        console.print(
            f"anvil        {anvil.url} (chain {dep.chain_id}); deployed in {time.monotonic() - started:.1f}s"
        )
        cluster = Cluster(workdir)
        try:
            relay_url = cluster.start_relay(anvil.url, opts.block_time)
            console.print(f"relay        {relay_url} (a block every {opts.block_time:g}s)")
            config = workdir / "keepers.toml"
            write_config(
                config, relay_url=relay_url, deployment=deployment, database=workdir / "keepers.sqlite",
                block_time=opts.block_time, native_token=dep.tokens["WETH"],
            )  # fmt: skip
            cluster.start_keepers(config)
            for kind, proc in cluster.keepers.items():
                console.print(f"keeper       {kind:<12} {proc.url}/metrics  (logs {proc.log})")
            not_ready = cluster.wait_ready()
            if not_ready:
                console.print(f"[red]keepers not ready: {', '.join(not_ready)}[/red]; see {workdir / 'logs'}")
                return 2
            return _simulate(opts, console, plain, stop, cluster, relay_url, dep, started)
        finally:
            cluster.stop()


def _simulate(opts: Options, console: Console, plain: bool, stop: threading.Event, cluster: Cluster,
              relay_url: str, dep: object, started: float) -> int:  # fmt: skip
    from keepers.devnet.deploy import Deployment

    assert isinstance(dep, Deployment)
    w3 = _web3(relay_url)
    sender = PublicSender(w3, dep.chain_id)
    traders = TraderSim(
        _web3(relay_url), dep, sender, [account(anvil_key(i)) for i in TRADER_KEYS], opts.seed
    )
    market = MarketDriver(_web3(relay_url), dep, sender, account(anvil_key(MARKET_KEY)), opts.seed + 1)
    traders.fund()
    market.fund()
    monitor = FillMonitor(_web3(relay_url), dep)
    first = monitor.last_block

    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a skipped tick is not news
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
    bt = opts.block_time
    scheduler.add_job(market.step, "interval", seconds=bt, id="market")
    scheduler.add_job(
        lambda: traders.place_orders(opts.orders_per_block), "interval", seconds=bt, id="orders"
    )
    scheduler.add_job(
        lambda: traders.cancel_some(monitor.open_orders()), "interval", seconds=5 * bt, id="cancel"
    )
    scheduler.add_job(traders.open_position, "interval", seconds=8 * bt, id="positions")
    scheduler.add_job(traders.open_basket, "interval", seconds=12 * bt, id="baskets")
    scheduler.start()
    metrics: dict[str, dict[str, float]] = {}
    health = [cluster.health(k) for k in KEEPER_KINDS]
    last_scrape = 0.0
    try:
        view = None if plain else LiveView(console, started, opts.blocks).__enter__()
        try:
            while not stop.is_set():
                for b in monitor.poll():
                    if plain:
                        print(plain_line(b, monitor), flush=True)
                if time.monotonic() - last_scrape > 2:  # the keepers' own endpoints, not every tick
                    metrics = {k: cluster.metrics(k) for k in KEEPER_KINDS}
                    health = [cluster.health(k) for k in KEEPER_KINDS] if view is not None else health
                    last_scrape = time.monotonic()
                if view is not None:
                    view.update(monitor, health, metrics)
                if opts.blocks is not None and monitor.last_block - first >= opts.blocks:
                    break
                time.sleep(0.1)
        finally:
            if view is not None:
                view.__exit__()
    finally:
        scheduler.shutdown(wait=True)
    # Let the last orders settle: the block after the last one judged, then the verdict.
    time.sleep(opts.block_time * 1.5)
    monitor.poll()
    metrics = {k: cluster.metrics(k) for k in KEEPER_KINDS}
    if opts.metrics_snapshot:
        opts.metrics_snapshot.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    codes = cluster.stop_keepers()
    summary = monitor.finish()
    gaps = _nonce_gaps(opts.workdir.resolve() / "keepers.sqlite", dep.chain_id)
    bundles = bundle_totals(metrics)
    console.print(summary_table(summary, codes, gaps, bundles))
    for m in summary.misses:
        console.print(f"  order {m.order_id} ({m.kind}): {m.why}")
    result = summary.as_json()
    result.update(
        keeper_exit_codes=codes,
        nonce_gaps=gaps,
        bundles=dict(zip(("sent", "included", "missed"), bundles, strict=True)),
    )
    if opts.summary_json:
        opts.summary_json.write_text(json.dumps(result, indent=2))
    unfilled = [m for m in summary.misses if m.filled_block is None]
    unclean = any(c != 0 for c in codes.values())
    failed = bool(unfilled or summary.below_limit or any(gaps.values()) or unclean)
    return 1 if failed else 0


def _nonce_gaps(database: Path, chain_id: int) -> dict[str, list[int]]:
    engine = make_engine(f"sqlite:///{database}")
    return {kind: NonceManager(engine, chain_id, keeper_address(kind)).gaps() for kind in KEEPER_KINDS}


def main(opts: Options) -> int:
    try:
        return run_devnet(opts)
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout.flush()

"""`keepers devnet`: the whole system on one machine. anvil mines through the local relay
every `block_time`, the platform is deployed and seeded, six keeper processes run from a
config file written here, simulated traders and a moving market keep them busy, and a referee
(keepers_workshop.devnet.monitor) judges every fill. With `--chains 2` a second, Polygon-like chain
runs beside it (its keepers on the public mempool), from the same config file. `--blocks N`
runs N blocks and exits with a summary, non-zero if an executable order was left unfilled, a
fill broke its limit, a nonce gap was left, or a keeper did not exit cleanly. Fills later than
the next block are listed with the reason the referee sees. `--reorg-every N` replaces the
last 1 to `--reorg-depth` blocks every N blocks (`anvil_reorg` through the relay); the referee
judges the new branch and the users re-read their nonces.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import requests
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from rich.console import Console
from sqlmodel import Session, select
from web3 import Web3

from keepers.chain.artifacts import load_artifact
from keepers.config.schema import KEEPER_KINDS
from keepers.store.engine import make_engine
from keepers.store.tables import ActionLedger, Cursor, Order, TxRecord
from keepers.tx.records import TxRecords
from keepers.tx.states import TxState
from keepers_workshop.devnet.anvil import Anvil, anvil_key
from keepers_workshop.devnet.cluster import (
    ACCOUNTS,
    CHAINS,
    ChainEndpoint,
    ChainPlan,
    Cluster,
    keeper_address,
    write_config,
)
from keepers_workshop.devnet.deploy import Deployment, deploy_platform, write_deployment
from keepers_workshop.devnet.market import MarketDriver
from keepers_workshop.devnet.monitor import UNFILLED_AFTER, FillMonitor, Reorg
from keepers_workshop.devnet.public import PublicSender, account, chain_id_cached
from keepers_workshop.devnet.traders import TraderSim
from keepers_workshop.devnet.view import ChainView, LiveView, plain_line, summary_table

log = structlog.get_logger("devnet")

TRADER_KEYS = (1, 2, 3, 4, 5, 6)
MARKET_KEY = 7
#: Blocks the referee follows after the traders and the market stop, at least and at most: it
#: stops early once every executable order has its verdict (filled, or executable for
#: `UNFILLED_AFTER` blocks), so a fill a busy machine delays is judged late, not unfilled.
SETTLE_BLOCKS = 3
SETTLE_MAX_BLOCKS = 3 + 2 * UNFILLED_AFTER
#: Reorgs leave the first blocks of the run alone: the users' funding (mints, approvals) is
#: mined there, and a trader without it only has reverts to send.
REORG_FLOOR_BLOCKS = 3


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
    chains: int = 1
    #: kill -9 a random keeper this often (seconds); the devnet restarts it as a supervisor would.
    kill_every: float | None = None
    #: The keepers' shared store (default: a SQLite file in the workdir).
    database_url: str | None = None
    #: Replace the last 1..reorg_depth blocks (seeded) this often (blocks), through the relay.
    reorg_every: int | None = None
    reorg_depth: int = 3

    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.workdir.resolve() / 'keepers.sqlite'}"


@dataclass
class ChainRun:
    """One devnet chain while it runs: its endpoint, its keepers, its users and its referee."""

    endpoint: ChainEndpoint
    dep: Deployment

    @property
    def plan(self) -> ChainPlan:
        return self.endpoint.plan

    @property
    def keepers(self) -> list[str]:
        return [self.plan.keeper_name(k) for k in KEEPER_KINDS]


class Reorger:
    """Reorgs a chain every `every` blocks: `anvil_reorg` of a seeded depth in 1..`max_depth`
    through the relay, which runs it alone between two block builds (sent to anvil directly it
    raced them). The new branch is empty: what the replaced blocks held is gone, as when a
    competing builder's blocks win. Never reaches back past `floor`."""

    def __init__(self, url: str, every: int, max_depth: int, floor: int, seed: int) -> None:
        self.url = url
        self.every = every
        self.max_depth = max_depth
        self.floor = floor
        self.rng = random.Random(seed)  # noqa: S311 - reproducible depths, not secrecy
        self.session = requests.Session()
        self.next_at = floor + every
        #: (head, depth) of each reorg done
        self.done: list[tuple[int, int]] = []

    def maybe(self, head: int) -> tuple[int, int] | None:
        """Reorgs if `head` (what the referee has judged) is due; (head, depth) if it did."""
        if head < self.next_at:
            return None
        self.next_at = head + self.every
        depth = min(self.rng.randint(1, self.max_depth), head - self.floor)
        if depth < 1:
            return None
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "anvil_reorg", "params": [depth, []]}
        answer = self.session.post(self.url, json=body, timeout=60).json()
        if "error" in answer:
            raise RuntimeError(f"the relay refused anvil_reorg {depth}: {answer['error']}")
        self.done.append((head, depth))
        return head, depth


def _web3(url: str) -> Web3:
    return Web3(chain_id_cached(url))


def _start_chain(plan: ChainPlan, first: bool, opts: Options, workdir: Path, nodes: ExitStack,
                 cluster: Cluster, console: Console) -> ChainRun:  # fmt: skip
    """anvil with the platform deployed; mined by the relay (flashbots) or on an interval (public)."""
    started = time.monotonic()
    order = ("--order", "fifo") if plan.submission == "flashbots" else ()  # the relay orders bundles
    anvil = nodes.enter_context(
        Anvil(chain_id=plan.chain_id, extra_args=(*order, "--accounts", str(ACCOUNTS)))
    )
    w3 = _web3(anvil.url)
    dep = deploy_platform(w3, anvil_key(0), updaters=(keeper_address("oracle"),))
    deployment = workdir / ("deployment.json" if first else f"deployment-{plan.name}.json")
    write_deployment(dep, deployment)
    if plan.submission == "flashbots":
        console.print(
            f"anvil        {anvil.url} ({plan.name}, chain {dep.chain_id}; internal: the relay builds"
            f" its blocks, so send through the relay); deployed in {time.monotonic() - started:.1f}s"
        )
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        url = cluster.start_relay(anvil.url, opts.block_time)
        console.print(f"relay        {url} ({plan.name}: bundles; a block every {opts.block_time:g}s)")
        console.print(
            f"rpc          {url} ({plan.name}: for wallets and scripts; what you send here is mined)"
        )
    else:
        # Interval mining replaces automine: a block every block_time from the node's own mempool.
        answer = w3.provider.make_request("evm_setIntervalMining", [int(opts.block_time)])  # type: ignore[arg-type]
        if "error" in answer:
            raise RuntimeError(f"anvil refused interval mining: {answer['error']}")
        url = anvil.url
        console.print(
            f"anvil        {anvil.url} ({plan.name}, chain {dep.chain_id});"
            f" deployed in {time.monotonic() - started:.1f}s"
        )
        console.print(f"rpc          {url} ({plan.name}: public mempool, for wallets, scripts and keepers)")
    return ChainRun(ChainEndpoint(plan, url, deployment, dep.tokens["WETH"], ws_url=anvil.ws_url), dep)


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

    started = time.monotonic()
    with ExitStack() as nodes:  # the anvils stop last, after every process that talks to them
        cluster = Cluster(workdir)
        try:
            runs = [
                _start_chain(plan, i == 0, opts, workdir, nodes, cluster, console)
                for i, plan in enumerate(CHAINS[: opts.chains])
            ]
            config = workdir / "keepers.toml"
            write_config(
                config, chains=[r.endpoint for r in runs], database_url=opts.store_url(),
                block_time=opts.block_time,
            )  # fmt: skip
            cluster.start_keepers(config, [name for r in runs for name in r.keepers])
            for name, proc in cluster.keepers.items():
                console.print(
                    f"keeper       {name:<20} {proc.url}/metrics  {proc.api_url}/orders  (logs {proc.log})"
                )
            not_ready = cluster.wait_ready()
            if not_ready:
                console.print(f"[red]keepers not ready: {', '.join(not_ready)}[/red]; see {workdir / 'logs'}")
                return 2
            return _simulate(opts, console, plain, stop, cluster, runs, started)
        finally:
            cluster.stop()
    raise AssertionError("unreachable")  # pragma: no cover - mypy cannot see through ExitStack


def _users(run: ChainRun, opts: Options, scheduler: BackgroundScheduler) -> FillMonitor:
    """Traders and the market of one chain, their jobs on the shared scheduler; its referee."""
    url, dep, name = run.endpoint.url, run.dep, run.plan.name
    sender = PublicSender(url, dep.chain_id)
    traders = TraderSim(_web3(url), dep, sender, [account(anvil_key(i)) for i in TRADER_KEYS], opts.seed)
    market = MarketDriver(_web3(url), dep, sender, account(anvil_key(MARKET_KEY)), opts.seed + 1)
    traders.fund()
    market.fund()
    monitor = FillMonitor(url, dep)
    # The referee follows every block: when it sees a reorg, the users' sent transactions may
    # be gone, so their nonces are read from the chain again.
    monitor.on_reorg.append(lambda _reorg: sender.forget_nonces())
    bt = opts.block_time
    scheduler.add_job(market.step, "interval", seconds=bt, id=f"{name}-market")
    scheduler.add_job(
        lambda: traders.place_orders(opts.orders_per_block), "interval", seconds=bt, id=f"{name}-orders"
    )
    scheduler.add_job(
        lambda: traders.cancel_some(monitor.open_orders()), "interval", seconds=5 * bt, id=f"{name}-cancel"
    )
    scheduler.add_job(traders.open_position, "interval", seconds=8 * bt, id=f"{name}-positions")
    scheduler.add_job(traders.open_basket, "interval", seconds=12 * bt, id=f"{name}-baskets")
    return monitor


def _simulate(opts: Options, console: Console, plain: bool, stop: threading.Event, cluster: Cluster,
              runs: list[ChainRun], started: float) -> int:  # fmt: skip
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a skipped tick is not news
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
    monitors = [(run, _users(run, opts, scheduler)) for run in runs]
    firsts = {run.plan.name: mon.last_block for run, mon in monitors}
    reorgers = {
        run.plan.name: Reorger(run.endpoint.url, opts.reorg_every, opts.reorg_depth,
                               firsts[run.plan.name] + REORG_FLOOR_BLOCKS, opts.seed + 3 + i)
        for i, (run, _mon) in enumerate(monitors)
        if opts.reorg_every and run.plan.submission == "flashbots"  # a relay runs it between builds
    }  # fmt: skip
    if plain:
        for run, mon in monitors:
            mon.on_reorg.append(_print_reorg(f"{run.plan.name}: " if len(runs) > 1 else ""))
    if opts.kill_every:
        rng = random.Random(opts.seed + 2)  # noqa: S311 - which keeper dies, reproducibly
        scheduler.add_job(
            lambda: cluster.kill_one(rng.choice), "interval", seconds=opts.kill_every, id="chaos"
        )
    scheduler.start()
    metrics: dict[str, dict[str, float]] = {}
    health = {name: cluster.health(name) for name in cluster.keepers}
    last_scrape = 0.0
    try:
        view = None if plain else LiveView(console, started, opts.blocks).__enter__()
        try:
            while not stop.is_set():
                for name in cluster.supervise():
                    _restart_clocks(name, monitors)
                    if plain:
                        print(f"supervisor: {name} restarted ({cluster.keepers[name].restarts}x)", flush=True)
                for name in cluster.back_up():
                    _restart_clocks(name, monitors)
                    if plain:
                        took = cluster.keepers[name].ready_after[-1]
                        print(f"supervisor: {name} ready {took:.1f}s after its restart", flush=True)
                for run, mon in monitors:
                    prefix = f"{run.plan.name}: " if len(runs) > 1 else ""
                    for b in mon.poll():
                        if plain:
                            print(prefix + plain_line(b, mon), flush=True)
                    reorger = reorgers.get(run.plan.name)
                    done = reorger.maybe(mon.last_block) if reorger else None
                    if done and plain:
                        print(
                            f"{prefix}reorg: the last {done[1]} block(s) replaced at block {done[0]}",
                            flush=True,
                        )
                # The keepers' own endpoints, for the live view only and not every tick: a scrape
                # costs the keepers CPU that their next block needs.
                if view is not None and time.monotonic() - last_scrape > 2:
                    metrics = {name: cluster.metrics(name) for name in cluster.keepers}
                    health = {name: cluster.health(name) for name in cluster.keepers}
                    last_scrape = time.monotonic()
                if view is not None:
                    view.update(
                        [
                            ChainView(run.plan, mon, [health[k] for k in run.keepers],
                                      len(reorgers[run.plan.name].done) if run.plan.name in reorgers else 0)
                            for run, mon in monitors
                        ],
                        metrics,
                    )  # fmt: skip
                if opts.blocks is not None and all(
                    mon.last_block - firsts[run.plan.name] >= opts.blocks for run, mon in monitors
                ):
                    break
                time.sleep(0.1)
        finally:
            if view is not None:
                view.__exit__()
    finally:
        scheduler.shutdown(wait=True)
    if cluster.revive_all():
        # Keepers were down when the traders stopped: an order is judged from the block all
        # of them were back (unfilled if still open UNFILLED_AFTER blocks after the restart).
        for _run, mon in monitors:
            mon.poll()
            mon.judge_from(mon.last_block)
    _settle(monitors, opts.block_time, cluster)
    metrics = {name: cluster.metrics(name) for name in cluster.keepers}
    if opts.metrics_snapshot:
        opts.metrics_snapshot.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    codes = cluster.stop_keepers()
    results: dict[str, dict[str, object]] = {}
    failed = False
    for run, mon in monitors:
        summary = mon.finish()
        ours = {k: codes[k] for k in run.keepers}
        gaps = _nonce_gaps(opts.store_url(), run)
        mismatches = _store_mismatches(opts.store_url(), run)
        for mismatch in mismatches:
            console.print(f"  [red]store differs from the chain[/red]: {mismatch}")
        sent = _submitted(opts.store_url(), run)
        title = f"{run.plan.name} summary (chain {run.dep.chain_id}, {run.plan.submission})"
        supervised = (sum(cluster.keepers[k].kills for k in run.keepers),
                      sum(cluster.keepers[k].restarts for k in run.keepers))  # fmt: skip
        reorgs_done = reorgers[run.plan.name].done if run.plan.name in reorgers else []
        console.print(
            summary_table(
                summary, ours, gaps, sent, submission=run.plan.submission, title=title, supervised=supervised,
                ready_after=[t for k in run.keepers for t in cluster.keepers[k].ready_after],
                reorgs_done=len(reorgs_done),
            )
        )  # fmt: skip
        for m in summary.misses:
            console.print(f"  order {m.order_id} ({m.kind}): {m.why}")
        result = summary.as_json()
        _explain_unfilled(result["unfilled_executable"], opts.store_url(), run)
        result.update(
            store_mismatches=mismatches,
            keeper_restarts={k: cluster.keepers[k].restarts for k in run.keepers},
            keeper_kills={k: cluster.keepers[k].kills for k in run.keepers},
            keeper_deaths={k: cluster.keepers[k].deaths for k in run.keepers},
            keeper_ready_after={
                k: [round(t, 2) for t in p.ready_after]
                for k, p in cluster.keepers.items()
                if k in run.keepers
            },
            chain_id=run.dep.chain_id,
            submission=run.plan.submission,
            keeper_exit_codes=ours,
            nonce_gaps=gaps,
            submitted=dict(zip(("sent", "included", "missed"), sent, strict=True)),
            reorgs_done=len(reorgs_done),
            reorg_depths=[depth for _head, depth in reorgs_done],
        )
        results[run.plan.name] = result
        unfilled = [m for m in summary.misses if m.filled_block is None]
        unclean = any(c != 0 for c in ours.values())
        failed |= bool(unfilled or summary.below_limit or any(gaps.values()) or unclean or mismatches)
    if opts.summary_json:
        opts.summary_json.write_text(json.dumps({"ok": not failed, "chains": results}, indent=2))
    return 1 if failed else 0


def _print_reorg(prefix: str) -> Callable[[Reorg], None]:
    def line(r: Reorg) -> None:
        print(
            f"{prefix}referee: reorg seen at block {r.head}: {r.depth} judged block(s) replaced after"
            f" block {r.fork}, {r.fills_undone} fill(s) undone; judging the new branch",
            flush=True,
        )

    return line


#: The order kinds each keeper kind fills (the oracle's prices trigger all of them).
_SERVES: dict[str, tuple[str, ...] | None] = {
    "limit-stop": ("limit", "stop-loss", "take-profit"),
    "twap": ("twap",),
    "iceberg": ("iceberg",),
    "oracle": None,
}


def _restart_clocks(name: str, monitors: list[tuple[ChainRun, FillMonitor]]) -> None:
    """A keeper restarted, and again once it is ready (its /readyz, which needs a first block
    handled, may come after its first fills): the orders it fills are judged from now (the
    property is no executable order left unfilled UNFILLED_AFTER blocks after the restart),
    not from blocks when nothing could fill them. How long its restarts took to be ready is
    measured and shown apart (`keeper_ready_after`), so a slow start is seen, not hidden."""
    for run, mon in monitors:
        for kind in KEEPER_KINDS:
            if run.plan.keeper_name(kind) == name and kind in _SERVES:
                mon.poll()
                mon.judge_from(mon.last_block, _SERVES[kind])


def _settle(pairs: list[tuple[ChainRun, FillMonitor]], block_time: float, cluster: Cluster) -> None:
    """Traders and the market have stopped: the referee follows SETTLE_BLOCKS to
    SETTLE_MAX_BLOCKS more blocks, until no executable order awaits its verdict, so a fill
    still in flight lands and is judged late (with its reason), not unfilled. Bounded by
    blocks, not by the clock: on a busy machine blocks come late too."""
    monitors = [mon for _run, mon in pairs]
    starts = [mon.last_block for mon in monitors]
    deadline = time.monotonic() + 3 * (SETTLE_MAX_BLOCKS + 3) * block_time  # a node that stopped

    def settled(mon: FillMonitor, start: int) -> bool:
        followed = mon.last_block - start
        return followed >= SETTLE_MAX_BLOCKS or (followed >= SETTLE_BLOCKS and not mon.awaiting_verdict())

    while time.monotonic() < deadline:
        for name in [*cluster.supervise(), *cluster.back_up()]:
            _restart_clocks(name, pairs)
        for mon in monitors:
            mon.poll()
        if all(settled(mon, start) for mon, start in zip(monitors, starts, strict=True)):
            return
        time.sleep(0.1)


def _store_mismatches(database_url: str, run: ChainRun) -> list[str]:
    """Every order in the store against the chain's `getOrder` at the furthest block the
    keepers' followers applied: the store must equal the chain (remaining amount; open only
    while something remains, filled or cancelled only when nothing does), whatever was killed
    along the way."""
    engine = make_engine(database_url)
    chain_id = run.dep.chain_id
    with Session(engine) as s:
        cursors = s.exec(select(Cursor).where(Cursor.chain_id == chain_id)).all()
        orders = s.exec(select(Order).where(Order.chain_id == chain_id)).all()
    if not cursors:
        return ["no follower cursor in the store"]
    at = max(c.block_number for c in cursors)
    w3 = _web3(run.endpoint.url)
    book = w3.eth.contract(
        address=Web3.to_checksum_address(run.dep.order_book), abi=load_artifact("OrderBook").abi
    )
    out = []
    for o in orders:
        if o.placed_block > at:
            continue  # placed after the last applied block (a lagging store is not a wrong one)
        remaining = int(book.functions.getOrder(o.order_id).call(block_identifier=at)[1])
        still_open = o.status in ("open", "armed", "partially_filled")
        closed = o.status in ("filled", "cancelled")  # "expired" keeps its escrow until refunded
        if remaining != o.remaining or (still_open and remaining == 0) or (closed and remaining > 0):
            store = f"store {o.status} remaining {o.remaining}"
            out.append(f"order {o.order_id}: {store}, chain remaining {remaining} at block {at}")
    return out


def _submitted(database_url: str, run: ChainRun) -> tuple[int, int, int]:
    """Sent, included and missed from the store, which outlives the keepers' processes (their
    metrics restart at 0): bundles on a Flashbots chain (by content: a re-targeted bundle is one),
    transactions on a mempool chain."""
    engine = make_engine(database_url)
    chain_id = run.dep.chain_id
    with Session(engine) as s:
        rows = s.exec(
            select(TxRecord.bundle_hash, TxRecord.tx_hash, TxRecord.state).where(
                TxRecord.chain_id == chain_id
            )
        ).all()
    landed = {TxState.CONFIRMED.value, TxState.FINALIZED.value}
    groups: dict[str, set[str]] = {}
    for bundle, tx, state in rows:
        key = bundle if run.plan.submission == "flashbots" else tx
        if key:
            groups.setdefault(key, set()).add(state)
    included = sum(1 for states in groups.values() if states & landed)
    missed = sum(1 for states in groups.values() if states == {TxState.DROPPED.value})
    return len(groups), included, missed


def _explain_unfilled(unfilled: list[dict[str, Any]], database_url: str, run: ChainRun) -> None:
    """Adds to each unfilled order what the keepers did about it, from the store's ledger and
    transaction records ("decided at 113: missed (bundle missed its blocks)"), so a failure seen
    once in CI explains itself."""
    if not unfilled:
        return
    engine = make_engine(database_url)
    with Session(engine) as s:
        actions = s.exec(select(ActionLedger).where(ActionLedger.chain_id == run.dep.chain_id)).all()
        reasons = {
            key.split("#")[0]: reason
            for key, reason in s.exec(
                select(TxRecord.idempotency_key, TxRecord.reason).where(TxRecord.chain_id == run.dep.chain_id)
            ).all()
            if reason
        }
    for miss in unfilled:
        mine = sorted((a for a in actions if miss["order_id"] in a.order_ids), key=lambda a: a.decided_block)
        miss["actions"] = [
            f"{a.keeper} decided at {a.decided_block}: {a.status}"
            + (f" at {a.included_block}" if a.included_block is not None else "")
            + (f" ({reasons[a.idempotency_key]})" if a.idempotency_key in reasons else "")
            for a in mine[-8:]
        ] or ["no keeper acted on it"]


def _nonce_gaps(database_url: str, run: ChainRun) -> dict[str, list[int]]:
    engine = make_engine(database_url)
    return {
        run.plan.keeper_name(kind): TxRecords(engine, run.dep.chain_id, keeper_address(kind)).gaps()
        for kind in KEEPER_KINDS
    }


def main(opts: Options) -> int:
    try:
        return run_devnet(opts)
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout.flush()

"""Reaction latency: from a new head that makes orders executable to their bundle accepted by
the local relay, with N open orders of mixed types in the book and K of them crossing per block;
broken down by stage. Beside it, in the same process against the same chain, the design most
automation networks use: one eth_call per open order per block (Chainlink Automation's
checkUpkeep, Gelato's checker), here with 32 calls in flight.

python -m bench.reaction [--open 1000,10000] [--crossing 1,50] [--blocks 200]

Stages, as the keeper (built by the runtime's factory, as `keepers run` builds it) runs them:
  head      block built by the relay -> the keeper saw the new head (head polling)
  sync      the block's header and logs fetched, decoded and stored (the follower)
  settle    the transaction manager's confirmer step at the head (receipts of what is in flight)
  market    the market snapshot read (pools, oracle)
  index     the trigger index brought up to date from the block and asked what its prices cross
  strategy  the built-in `best-execution` strategy plans its batches
  nonce     nonce allocation and the records and ledger rows, in the store (one transaction)
  simulate  eth_callBundle at the relay
  send      eth_sendBundle until the relay accepted it
  other     the rest: signing, bookkeeping, scheduling between the stages

Beside the stages, where the machine's time went in each block's window (Linux schedstat, all
threads, ns resolution): CPU time of the keeper's process, the relay and anvil, and the time
the keeper's threads were runnable but waiting for a core (run queue). A slow block whose
keeper CPU is at its median and whose run-queue wait is not, was preempted, not slow itself.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import AsyncExitStack
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import anyio
import requests
from eth_account import Account
from sqlalchemy import Engine, event
from web3 import AsyncWeb3, Web3

from bench.book import Book
from bench.common import RESULTS, machine, write_results
from keepers.chain.http import SessionHTTPProvider
from keepers.engine.loop import KeeperLoop
from keepers.obs.logging import configure_logging
from keepers.runtime import build_keeper
from keepers.tx.manager import Status, TxManager
from keepers.tx.routes import BundleRoute
from keepers_workshop.devnet.anvil import anvil_key, free_port
from keepers_workshop.devnet.deploy import Deployment, bind
from keepers_workshop.testing import keeper_settings

STAGES = ("head", "sync", "settle", "market", "index", "strategy", "nonce", "simulate", "send", "other")
#: Per block window: CPU of the keeper's process, the relay and anvil; the keeper's run-queue wait.
SCHED = ("keeper_cpu", "keeper_runq", "relay_cpu", "anvil_cpu")
FLOOR_P99_MS = 40.0  # at 100k open orders with 50 crossing
KEEPER_KEY = 9
TRADER_KEYS = (1, 2, 3)
GAS_LIMIT = 300_000_000


def _schedstat(pid: int) -> tuple[float, float]:
    """(CPU seconds, run-queue wait seconds) of every thread of `pid` so far."""
    cpu = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, waited, _slices = (task / "schedstat").read_text().split()
        except (OSError, ValueError):  # a thread that ended
            continue
        cpu, wait = cpu + int(on_cpu), wait + int(waited)
    return cpu / 1e9, wait / 1e9


class Clock:
    """Stage times of the block being measured (one keeper task at a time writes them)."""

    def __init__(self, others: dict[str, int] | None = None) -> None:
        #: Processes whose CPU time is recorded per block besides the keeper's (relay, anvil).
        self.others = others or {}
        self._sched: dict[str, tuple[float, float]] = {}
        self.built_at: float | None = None
        self.seen_at: float | None = None
        self.marks: dict[str, float] = {}
        self.done = threading.Event()
        self.rows: list[dict[str, float]] = []

    def _sample(self) -> dict[str, tuple[float, float]]:
        pids = {"keeper": os.getpid(), **self.others}
        return {name: _schedstat(pid) for name, pid in pids.items()}

    def arm(self) -> None:
        """Before the block is built: nothing of the previous block counts."""
        self.built_at = self.seen_at = None
        self.marks = {}
        self.done.clear()

    def built(self) -> None:
        """The relay built the block (its reply is here): the window starts."""
        self._sched = self._sample()
        self.built_at = time.perf_counter()

    def mark(self, stage: str, started: float) -> None:
        if not self.done.is_set():
            self.marks[stage] = self.marks.get(stage, 0.0) + time.perf_counter() - started

    def finish(self) -> None:
        if self.done.is_set() or self.built_at is None:
            return
        end = time.perf_counter()
        # The block is visible from the moment the relay mined it, a little before its reply
        # reached us: start from whichever we saw first.
        start = min(self.built_at, self.seen_at or self.built_at)
        row = {**self.marks, "head": (self.seen_at or start) - start, "total": end - start}
        row["block"] = len(self.rows)  # its place in the run (0: the first after catch-up)
        row["other"] = max(0.0, row["total"] - sum(v for k, v in row.items() if k in STAGES))
        # Read after the end is taken: the reads are not in the block's time. The window is
        # the block built -> its bundle accepted.
        for name, (cpu, wait) in self._sample().items():
            row[f"{name}_cpu"] = cpu - self._sched[name][0]
            if name == "keeper":
                row["keeper_runq"] = wait - self._sched[name][1]
        self.rows.append(row)
        self.done.set()


def _timed(clock: Clock, stage: str, fn: Any) -> Any:
    """`fn` (a bound method or callable of the keeper) with its time added to `stage`."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                clock.mark(stage, t)

        return timed_async

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.mark(stage, t)

    return timed


class DbTransactions:
    """Counts the commits the transaction manager makes (its settle and submit calls, the
    store threads they start included), not the follower's or the lease's."""

    def __init__(self) -> None:
        self.commits = 0
        self._inside: ContextVar[bool] = ContextVar("in_txm", default=False)

    def watch(self, engine: Engine, txm: TxManager) -> None:
        event.listen(engine, "commit", self._on_commit)
        txm.settle = self._counted(txm.settle)  # type: ignore[method-assign]
        txm.submit = self._counted(txm.submit)  # type: ignore[method-assign]
        # The allocation commits on the DBAPI connection (SQLite) or in autocommit
        # (PostgreSQL), where SQLAlchemy sees no commit: one transaction a call.
        allocate = txm.records.allocate

        def counted_allocate(*args: Any, **kwargs: Any) -> Any:
            self._on_commit(None)
            return allocate(*args, **kwargs)

        txm.records.allocate = counted_allocate  # type: ignore[method-assign]

    def _on_commit(self, _conn: Any) -> None:
        if self._inside.get():
            self.commits += 1

    def _counted(self, fn: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            token = self._inside.set(True)
            try:
                return await fn(*args, **kwargs)
            finally:
                self._inside.reset(token)

        return counted


def instrument(loop: KeeperLoop, clock: Clock) -> None:
    """Thin timing wrappers on the built keeper's own parts: nothing in the keeper changes."""
    step = loop.step

    async def seen(number: int) -> None:
        if clock.seen_at is None:
            clock.seen_at = time.perf_counter()
        await step(number)

    loop.step = seen  # type: ignore[method-assign]
    loop.source.block = _timed(clock, "sync", loop.source.block)  # type: ignore[method-assign]
    assert loop.snapshots is not None
    loop.snapshots.read = _timed(clock, "market", loop.snapshots.read)  # type: ignore[method-assign]
    loop.candidates = _timed(clock, "index", loop.candidates)
    loop.strategy.on_block = _timed(clock, "strategy", loop.strategy.on_block)  # type: ignore[method-assign]
    txm = loop.txm
    txm.settle = _timed(clock, "settle", txm.settle)  # type: ignore[method-assign]
    txm.records.allocate = _timed(clock, "nonce", txm.records.allocate)  # type: ignore[method-assign]
    route = txm.route
    assert isinstance(route, BundleRoute)
    route.simulate = _timed(clock, "simulate", route.simulate)  # type: ignore[method-assign]
    send = _timed(clock, "send", route.send)

    async def sent(*args: Any, **kwargs: Any) -> Any:
        out = await send(*args, **kwargs)
        clock.finish()
        return out

    route.send = sent  # type: ignore[method-assign]


class Chain:
    """anvil with the platform and N resting orders, then the relay in front of it."""

    def __init__(self, open_orders: int) -> None:
        # The resting book is built by bench.book's BulkPlacer (a thousand orders a transaction).
        self.book = Book(open_orders)
        self.anvil = self.book.anvil
        self.book.set_gas_limit(GAS_LIMIT)
        w3 = self.book.w3
        self.dep: Deployment = self.book.dep
        self.traders = [Account.from_key(anvil_key(i)) for i in TRADER_KEYS]
        self.nonces = {t.address: 0 for t in self.traders}
        self.w3 = w3
        self._fund()
        self.book.hand_to_relay()
        self.setup_seconds = self.book.setup_seconds
        # The relay in its own process, as a real one is: in this one it would share the GIL
        # with the keeper being measured.
        self.relay_url = f"http://127.0.0.1:{free_port()}"
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "keepers.cli", "relay", "--anvil", self.anvil.url,
             "--port", self.relay_url.rsplit(":", 1)[1], "--block-time", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.rw3 = Web3(Web3.HTTPProvider(self.relay_url))
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError("the relay did not start")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            return self.rw3.is_connected()
        except OSError:
            return False

    def _send(self, trader: Any, to: str, data: str, gas: int = 500_000) -> None:
        tx = {"to": to, "data": data, "gas": gas, "nonce": self.nonces[trader.address], "chainId": 31337,
              "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9, "value": 0}  # fmt: skip
        self.nonces[trader.address] += 1
        self.w3.eth.send_raw_transaction(trader.sign_transaction(tx).raw_transaction)

    def _fund(self) -> None:
        for trader in self.traders:
            for symbol in ("WETH", "USDC"):
                token = bind(self.w3, "DevnetToken", self.dep.tokens[symbol])
                token.functions.mint(trader.address, 10**36).transact({"from": trader.address})
                token.functions.approve(self.dep.order_book, 2**256 - 1).transact({"from": trader.address})
        for t in self.traders:
            self.nonces[t.address] = self.w3.eth.get_transaction_count(t.address)

    def build(self) -> int:
        requests.post(
            self.relay_url, json={"jsonrpc": "2.0", "id": 1, "method": "relay_buildBlock"}, timeout=60
        )
        return int(self.rw3.eth.block_number)

    def place_crossing(self, k: int, block: int) -> None:
        """K limit orders executable at once (half the market price asked, 30 bps to the keeper),
        via the relay's mempool; selling WETH on even blocks and buying it back on odd ones, so
        the price stays where it is over the run."""
        book = bind(self.rw3, "OrderBook", self.dep.order_book)
        if block % 2 == 0:
            terms = (self.dep.markets["WETH/USDC"], 0, 2 * 10**17, 200 * 10**6, 0, 30, 0, 0, 0, 0, 0)
        else:
            terms = (self.dep.markets["USDC/WETH"], 0, 400 * 10**6, 10**17, 0, 30, 0, 0, 0, 0, 0)
        data = book.functions.placeOrder(terms)._encode_transaction_data()
        for i in range(k):
            trader = self.traders[i % len(self.traders)]
            nonce = self.nonces[trader.address]
            tx = {"to": self.dep.order_book, "data": data, "gas": 400_000, "nonce": nonce, "chainId": 31337,
                  "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9, "value": 0}  # fmt: skip
            self.nonces[trader.address] += 1
            self.rw3.eth.send_raw_transaction(trader.sign_transaction(tx).raw_transaction)

    def pids(self) -> dict[str, int]:
        """The relay's and anvil's processes, for the per-block CPU record."""
        anvil = self.anvil._proc
        return {"relay": self.relay.pid, **({"anvil": anvil.pid} if anvil is not None else {})}

    def stop(self) -> None:
        self.relay.terminate()
        self.relay.wait(10)
        self.anvil.stop()


def measure(open_orders: int, crossing: list[int], blocks: int, database: str) -> list[dict[str, Any]]:
    chain = Chain(open_orders)
    rows = []
    try:
        checker = checker_per_order(chain, open_orders)
        for k in crossing:
            setup = round(chain.setup_seconds, 1)
            rows.append({"open_orders": open_orders, "crossing": k, "setup_seconds": setup,
                         **keeper_reaction(chain, k, blocks, database), **checker})  # fmt: skip
    finally:
        chain.stop()
    return rows


def keeper_reaction(chain: Chain, k: int, blocks: int, database: str) -> dict[str, Any]:
    clock = Clock(chain.pids())
    stop = threading.Event()
    ready = threading.Event()
    catch_up = [0.0]
    keys = tempfile.TemporaryDirectory()
    settings = keeper_settings(
            Path(keys.name), chain.relay_url, chain.dep, "limit-stop", "best-execution",
            {"native_token": chain.dep.tokens["WETH"], "max_orders": 200},
            key=anvil_key(KEEPER_KEY), database_url=database, poll_interval=0.002,
        )  # fmt: skip

    async def stopped() -> None:
        while not stop.is_set():
            await anyio.sleep(0.01)

    db = DbTransactions()
    loops: list[KeeperLoop] = []

    async def main() -> None:
        async with AsyncExitStack() as stack:
            built = await build_keeper(settings, "limit-stop", stack)
            t = time.perf_counter()
            await built.loop.source.follower.sync()
            catch_up[0] = time.perf_counter() - t
            instrument(built.loop, clock)
            db.watch(built.engine, built.loop.txm)
            loops.append(built.loop)
            ready.set()
            await built.run(stopped)

    thread = threading.Thread(target=lambda: anyio.run(main), daemon=True)
    thread.start()
    ready.wait(600)
    time.sleep(0.5)
    missed = 0
    try:
        for b in range(blocks):
            chain.place_crossing(k, b)
            clock.arm()
            chain.build()  # the orders land in this block: executable from its state on
            clock.built()
            if not clock.done.wait(10):
                missed += 1
            chain.build()  # the keeper's bundle lands; the orders are filled
    finally:
        stop.set()
        thread.join(30)
        keys.cleanup()
    totals = sorted(r["total"] * 1000 for r in clock.rows)
    simulations = sorted(r.get("simulate", 0.0) * 1000 for r in clock.rows)
    included = sum(o.status is Status.INCLUDED for o in loops[0].state.outcomes) if loops else 0
    stages = _medians(clock.rows, STAGES)
    return {
        "blocks": blocks,
        "measured": len(clock.rows),
        "no_bundle": missed,
        "p50_ms": round(_pct(totals, 0.5), 1),
        "p99_ms": round(_pct(totals, 0.99), 1),
        "max_ms": round(totals[-1], 1) if totals else None,
        "stage_p50_ms": stages,
        # eth_callBundle at the relay, as the keeper waits for it (HTTP and signing included).
        "call_bundle_p99_ms": round(_pct(simulations, 0.99), 1),
        # Database transactions the transaction manager committed, per action included.
        "db_transactions_per_action": round(db.commits / included, 2) if included else None,
        # What the tail is made of: the slowest blocks, stage by stage, and where the machine's
        # time went in their windows (CPU of each process, the keeper's run-queue wait).
        "slowest_ms": [
            {"block": r["block"], **{s: round(r.get(s, 0.0) * 1000, 1) for s in (*STAGES, "total", *SCHED)}}
            for r in sorted(clock.rows, key=lambda r: r["total"], reverse=True)[:5]
        ],
        "sched_p50_ms": _medians(clock.rows, SCHED),
        "catch_up_seconds": round(catch_up[0], 1),
    }


def checker_per_order(chain: Chain, open_orders: int, rounds: int = 3) -> dict[str, Any]:
    """One eth_call per open order (can this order alone be filled now?) on the head, 32 in flight."""
    book = bind(chain.rw3, "OrderBook", chain.dep.order_book)
    pool = Web3.to_checksum_address(chain.dep.pools[0]["address"])
    market = chain.dep.markets["WETH/USDC"]
    me = Web3.to_checksum_address("0x" + "5e" * 20)
    datas = [
        book.functions.executeBatchAtLeast([(market, [pool], [i], [])], me, 1)._encode_transaction_data()
        for i in range(1, open_orders + 1)
    ]

    async def one_round() -> float:
        w3 = AsyncWeb3(SessionHTTPProvider(chain.relay_url))
        head = hex(int(await w3.eth.block_number))
        sem = anyio.Semaphore(32)

        async def check(data: str) -> None:
            async with sem:
                await w3.provider.make_request(
                    "eth_call",
                    [{"from": me, "to": book.address, "data": data}, head],
                )

        t = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for d in datas:
                tg.start_soon(check, d)
        elapsed = time.perf_counter() - t
        await w3.provider.disconnect()
        return elapsed

    times = [anyio.run(one_round) for _ in range(rounds)]
    return {"checker_ms_per_block": round(statistics.median(times) * 1000, 1)}


def _medians(rows: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """Median of each key over the blocks, in ms."""
    if not rows:
        return {}
    return {k: round(statistics.median([r.get(k, 0.0) * 1000 for r in rows]), 2) for k in keys}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--open", default="1000,10000", help="open orders, comma separated")
    parser.add_argument("--crossing", default="1,50", help="orders crossing per block")
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_logging("warning", json=False)
    crossing = [int(k) for k in args.crossing.split(",")]
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.open.split(",")):
        with tempfile.TemporaryDirectory() as d:
            rows += measure(n, crossing, args.blocks, f"sqlite:///{d}/r.sqlite")
    m = machine()
    lines = [
        f"Reaction latency, {m['date']}, {m['cores']} cores. "
        f"Command: `./dev bench reaction --open {args.open} "
        f"--crossing {args.crossing} --blocks {args.blocks}`.",
        "",
        "| open orders | crossing per block | blocks | p50 ms | p99 ms | max ms | eth_callBundle p99 ms "
        "| db transactions per action | checker-per-order ms per block | ratio (checker / keeper p50) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["checker_ms_per_block"] / r["p50_ms"] if r["p50_ms"] else float("nan")
        lines.append(
            f"| {r['open_orders']:,} | {r['crossing']} | {r['measured']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} | {r['call_bundle_p99_ms']} | {r['db_transactions_per_action']} | "
            f"{r['checker_ms_per_block']:,} | {ratio:,.0f}x |"
        )
    lines += ["", "Median per stage (ms):", "", "| open | crossing | " + " | ".join(STAGES) + " |",
              "| ---: | ---: | " + " | ".join("---:" for _ in STAGES) + " |"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['open_orders']:,} | {r['crossing']} | "
            + " | ".join(str(r["stage_p50_ms"].get(s, "-")) for s in STAGES)
            + " |"
        )
    lines += ["", "Where the time went in each block's window (ms; median block, then the three slowest): "
              "CPU of the keeper's process, its threads' run-queue wait, CPU of the relay and of anvil.", "",
              "| open | crossing | block | total | " + " | ".join(SCHED) + " |",
              "| ---: | ---: | --- | ---: | " + " | ".join("---:" for _ in SCHED) + " |"]  # fmt: skip
    for r in rows:
        blocks = [("median", r["p50_ms"], r["sched_p50_ms"])]
        blocks += [(f"slowest {i + 1}", b["total"], b) for i, b in enumerate(r["slowest_ms"][:3])]
        for name, total, sched in blocks:
            lines.append(
                f"| {r['open_orders']:,} | {r['crossing']} | {name} | {total} | "
                + " | ".join(str(sched.get(s, "-")) for s in SCHED)
                + " |"
            )
    lines += ["", f"Floors: p99 under {FLOOR_P99_MS:g} ms at 100,000 open orders with 50 crossing; "
              "eth_callBundle p99 under 10 ms; at most 3 database transactions per action."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    write_results("reaction", {"machine": m, "rows": rows}, text, args.results_dir)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

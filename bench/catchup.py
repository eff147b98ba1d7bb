"""Catch-up, first fill, memory and CPU: a chain with a large book of order events behind it.

1. Catch-up: a follower starts from block 0 on an empty store and applies every order event
   (placements of `--open` resting orders, plus `--cancelled` placed and cancelled again);
   events applied per second.
2. A real `keepers run limit-stop` process then starts, empty store and all, behind the local
   relay, with one executable order placed: time from its start to that order's fill (its
   catch-up included), its resident memory with the open book loaded, and its CPU seconds
   per idle block over `--idle-blocks` blocks.

python -m bench.catchup [--open 100000] [--cancelled 50000] [--idle-blocks 20] [--block-time 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from eth_account import Account
from web3 import AsyncWeb3, Web3

from bench.book import Book, behind_relay
from bench.common import RESULTS, machine, write_results
from keepers.chain.follower import ChainFollower
from keepers.chain.http import SessionHTTPProvider
from keepers.config.contracts import ContractAddresses
from keepers.runtime import event_decoder
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers_workshop.devnet.anvil import anvil_key
from keepers_workshop.devnet.deploy import bind

FLOOR_EVENTS_PER_S = 20_000
FLOOR_RSS_MB = 300
TRADER_KEY = 5
#: Seconds between the relay's blocks. Long, because the local relay simulates a bundle by
#: snapshotting anvil, which copies its whole state: about 1.5 s with a 150k-order book, so
#: at shorter blocks the simulation itself made every bundle late (a local relay's cost: a
#: real builder does not copy its state per simulation).
BLOCK_TIME = 5.0


def catch_up(book: Book, url: str) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    d = book.dep
    addrs = ContractAddresses(d.order_book, d.oracle, d.lending_market, d.vault, d.flash_liquidator, (), None)
    follower = ChainFollower(
        AsyncWeb3(SessionHTTPProvider(book.anvil.url)), engine, d.chain_id, event_decoder(addrs)
    )
    t = time.perf_counter()
    result = anyio.run(follower.sync)
    elapsed = time.perf_counter() - t
    return {
        "events_applied": result.applied,
        "blocks": result.number + 1,
        "catch_up_seconds": round(elapsed, 2),
        "events_per_second": round(result.applied / elapsed),
    }


def _place_executable(w3: Web3, book: Book) -> int:
    """A limit order the pools fill at once (half the market price asked); returns its id."""
    trader = Account.from_key(anvil_key(TRADER_KEY))
    weth = bind(w3, "DevnetToken", book.dep.tokens["WETH"])
    ob = bind(w3, "OrderBook", book.dep.order_book)
    nonce = w3.eth.get_transaction_count(trader.address)
    next_id = int(ob.functions.nextOrderId().call())
    terms = (book.dep.markets["WETH/USDC"], 0, 10**17, 100 * 10**6, 0, 30, 0, 0, 0, 0, 0)
    calls = [
        (weth.address, weth.functions.mint(trader.address, 10**20)),
        (weth.address, weth.functions.approve(ob.address, 2**256 - 1)),
        (ob.address, ob.functions.placeOrder(terms)),
    ]
    for i, (to, fn) in enumerate(calls):
        tx = {"to": to, "data": fn._encode_transaction_data(), "gas": 400_000, "chainId": 31337, "value": 0,
              "nonce": nonce + i, "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}  # fmt: skip
        w3.eth.send_raw_transaction(trader.sign_transaction(tx).raw_transaction)
    return next_id


def _proc_stat(pid: int) -> tuple[float, float]:
    """(resident MB, CPU seconds) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def keeper_footprint(book: Book, idle_blocks: int, block_time: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, behind_relay(book, Path(tmp), block_time) as running:
        cluster, relay, config = running
        rw3 = Web3(Web3.HTTPProvider(relay))
        order_id = _place_executable(rw3, book)
        ob = bind(rw3, "OrderBook", book.dep.order_book)
        deadline = time.monotonic() + 30
        while int(ob.functions.getOrder(order_id).call()[1]) == 0:  # not mined yet
            if time.monotonic() > deadline:
                raise RuntimeError("the executable order was not placed")
            time.sleep(0.05)
        t0 = time.monotonic()
        cluster.start_keepers(config, ["limit-stop"])
        proc = cluster.keepers["limit-stop"]
        while int(ob.functions.getOrder(order_id).call()[1]) != 0:  # remaining
            if not proc.alive() or time.monotonic() - t0 > 600:
                tail = proc.log.read_text()[-3000:] if proc.log else ""
                raise RuntimeError(f"no fill; the keeper's log ends:\n{tail}")
            time.sleep(0.05)
        first_fill = time.monotonic() - t0
        head = rw3.eth.block_number
        while rw3.eth.block_number < head + 3:  # let the fill's bookkeeping settle
            time.sleep(0.1)
        _rss, cpu0 = _proc_stat(proc.popen.pid)
        start = rw3.eth.block_number
        while rw3.eth.block_number < start + idle_blocks:
            time.sleep(0.1)
        rss, cpu1 = _proc_stat(proc.popen.pid)
        blocks = rw3.eth.block_number - start
    return {
        "block_time_s": block_time,
        "first_fill_seconds": round(first_fill, 1),
        "keeper_rss_mb": round(rss),
        "idle_blocks": blocks,
        "cpu_ms_per_idle_block": round(1000 * (cpu1 - cpu0) / max(1, blocks), 1),
    }


def run(open_orders: int, cancelled: int, idle_blocks: int, block_time: float) -> dict[str, Any]:
    book = Book(open_orders, cancelled)
    try:
        row: dict[str, Any] = {"open_orders": open_orders, "order_events": book.events,
                               "chain_build_seconds": round(book.setup_seconds, 1)}  # fmt: skip
        with tempfile.TemporaryDirectory() as d:
            row.update(catch_up(book, f"sqlite:///{d}/c.sqlite"))
        row.update(keeper_footprint(book, idle_blocks, block_time))
    finally:
        book.stop()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--open", type=int, default=100_000, help="resting orders left open")
    parser.add_argument("--cancelled", type=int, default=50_000, help="orders placed, then cancelled")
    parser.add_argument("--idle-blocks", type=int, default=20)
    parser.add_argument("--block-time", type=float, default=BLOCK_TIME)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    row = run(args.open, args.cancelled, args.idle_blocks, args.block_time)
    m = machine()
    cmd = (
        f"./dev bench catchup --open {args.open} --cancelled {args.cancelled} "
        f"--idle-blocks {args.idle_blocks} --block-time {args.block_time}"
    )
    md = (
        f"Catch-up, first fill, memory and CPU, {m['date']}, {m['cores']} cores, SQLite, "
        f"relay blocks every {args.block_time} s.\n"
        f"Command: `{cmd}`.\n\n"
        "| order events | open orders | events/s (floor 20,000) | first fill after start | "
        "keeper RSS (floor 300 MB) | CPU per idle block |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"| {row['events_applied']:,} | {row['open_orders']:,} | {row['events_per_second']:,} | "
        f"{row['first_fill_seconds']} s | {row['keeper_rss_mb']} MB | {row['cpu_ms_per_idle_block']} ms |\n"
    )
    floors = {"events_per_second": FLOOR_EVENTS_PER_S, "keeper_rss_mb": FLOOR_RSS_MB}
    write_results("catchup", {"machine": m, "floors": floors, "rows": [row]}, md, args.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Catch-up speed: a follower starting from block 0 against a chain with N order events behind it.

python -m bench.catchup [--orders 5000] [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from eth_account import Account
from web3 import AsyncWeb3, Web3

from bench.common import RESULTS, machine, write_results
from keepers.chain.artifacts import load_artifact
from keepers.chain.events import EventDecoder
from keepers.chain.follower import ChainFollower
from keepers.chain.http import SessionHTTPProvider
from keepers.devnet.anvil import DEFAULT_KEYS, Anvil
from keepers.devnet.deploy import Sender, bind, deploy_platform
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate

PER_BLOCK = 200


def _fill_chain(w3: Web3, orders: int) -> tuple[str, str]:
    dep = deploy_platform(w3, DEFAULT_KEYS[0])
    trader = Account.from_key(DEFAULT_KEYS[1])
    s = Sender(w3, DEFAULT_KEYS[1])
    weth = bind(w3, "DevnetToken", dep.tokens["WETH"])
    s.call(weth, "mint", trader.address, 10**30)
    s.call(weth, "approve", dep.order_book, 2**256 - 1)
    book = bind(w3, "OrderBook", dep.order_book)
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    nonce = w3.eth.get_transaction_count(trader.address)
    template = book.functions.placeOrder((dep.markets["WETH/USDC"], 0, 10**15, 1, 0, 10, 0, 0, 0, 0))
    data = template.build_transaction({"from": trader.address, "gas": 200_000})["data"]
    for i in range(orders):
        tx = {"to": dep.order_book, "data": data, "gas": 200_000, "nonce": nonce + i, "chainId": 31337,
              "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9, "value": 0}  # fmt: skip
        w3.eth.send_raw_transaction(trader.sign_transaction(tx).raw_transaction)
        if (i + 1) % PER_BLOCK == 0:
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    return dep.order_book, dep.lending_market


def run(orders: int, url: str) -> dict[str, Any]:
    with Anvil(extra_args=("--gas-limit", "60000000")) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.url))
        t0 = time.perf_counter()
        book, market = _fill_chain(w3, orders)
        generated = time.perf_counter() - t0
        engine = make_engine(url)
        migrate(engine)
        decoder = EventDecoder([(book, load_artifact("OrderBook")), (market, load_artifact("LendingMarket"))])
        follower = ChainFollower(
            AsyncWeb3(SessionHTTPProvider(chain.url)), engine, 31337, decoder, page_size=2000
        )
        t1 = time.perf_counter()
        result = anyio.run(follower.sync)
        elapsed = time.perf_counter() - t1
    return {
        "orders": orders,
        "events_applied": result.applied,
        "blocks": result.head + 1,
        "seconds": round(elapsed, 3),
        "events_per_second": round(result.applied / elapsed, 1),
        "chain_generation_seconds": round(generated, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        row = {"database": "sqlite", **run(args.orders, f"sqlite:///{d}/c.sqlite")}
    m = machine()
    md = (
        f"Catch-up, {m['date']}, {m['cores']} cores. "
        f"Command: `./dev bench catchup --orders {args.orders}`.\n\n"
        "| database | events | blocks | seconds | events/s |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"| {row['database']} | {row['events_applied']:,} | {row['blocks']:,} | {row['seconds']} | "
        f"{row['events_per_second']:,} |\n"
    )
    write_results("catchup", {"machine": m, "rows": [row]}, md, args.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

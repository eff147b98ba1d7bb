"""Fill capacity: the most orders one keeper fills in one block and per second, and the gas per
fill at that batch size.

`--orders` small limit orders, all executable at once, rest in the book of a chain with a
mainnet-sized block (30M gas); a real `keepers run limit-stop` process behind the local relay
drains them. Run once per `--max-orders` (the strategy's batch cap, default 40, schema cap
500). Per block: orders filled and the gas of the fill transactions, from the OrderFilled logs
and their receipts.

python -m bench.capacity [--orders 2000] [--max-orders 40,500] [--block-time 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from web3 import Web3

from bench.book import Book, behind_relay
from bench.common import RESULTS, machine, write_results

BLOCK_GAS = 30_000_000
#: OrderFilled(uint256,address,uint256,uint256,uint256,uint256)
FILLED = Web3.keccak(text="OrderFilled(uint256,address,uint256,uint256,uint256,uint256)").to_0x_hex()


def drain(orders: int, max_orders: int, block_time: float) -> dict[str, Any]:
    book = Book(0)
    try:
        market = book.dep.markets["WETH/USDC"]
        # 0.001 WETH for at least 1 micro-USDC, 30 bps to the keeper: executable whatever the
        # pools' price after thousands of fills.
        terms = (market, 0, 10**15, 1, 0, 30, 0, 0, 0, 0, 0)
        for i in range(0, orders, 1000):
            book.place(terms, min(1000, orders - i))
        book.set_gas_limit(BLOCK_GAS)
        caps = {"limit-stop": {"max_orders": max_orders}}
        with tempfile.TemporaryDirectory() as tmp, behind_relay(book, Path(tmp), block_time, caps) as running:
            cluster, relay, config = running
            w3 = Web3(Web3.HTTPProvider(relay, request_kwargs={"timeout": 60}))
            start_block = int(w3.eth.block_number)
            cluster.start_keepers(config, ["limit-stop"])
            proc = cluster.keepers["limit-stop"]
            deadline = time.monotonic() + 60 + 5 * orders / max_orders * block_time
            logs: list[dict[str, Any]] = []
            while len(logs) < orders and proc.alive() and time.monotonic() < deadline:
                time.sleep(max(block_time, 0.5))
                logs = _fill_logs(w3, book.dep.order_book, start_block)
        per_block = Counter(int(lg["blockNumber"], 16) for lg in logs)
        gas_by_block: Counter[int] = Counter()
        for tx_hash in {lg["transactionHash"] for lg in logs}:
            receipt = _rpc(book.w3, "eth_getTransactionReceipt", tx_hash)
            gas_by_block[int(receipt["blockNumber"], 16)] += int(receipt["gasUsed"], 16)
    finally:
        book.stop()
    return summarise(orders, max_orders, block_time, per_block, gas_by_block)


def _rpc(w3: Web3, method: str, *params: Any) -> Any:
    return w3.provider.make_request(method, list(params))["result"]  # type: ignore[arg-type]


def _fill_logs(w3: Web3, book: str, from_block: int) -> list[dict[str, Any]]:
    query = {"fromBlock": hex(from_block), "toBlock": "latest", "address": book, "topics": [FILLED]}
    return list(_rpc(w3, "eth_getLogs", query))


def summarise(
    orders: int, max_orders: int, block_time: float, per_block: Counter[int], gas_by_block: Counter[int]
) -> dict[str, Any]:
    fills = sum(per_block.values())
    best = max(per_block, key=lambda b: per_block[b]) if per_block else None
    blocks = max(per_block) - min(per_block) + 1 if per_block else 0
    return {
        "orders": orders,
        "max_orders": max_orders,
        "block_time_s": block_time,
        "block_gas_limit": BLOCK_GAS,
        "filled": fills,
        "most_in_one_block": per_block[best] if best is not None else 0,
        "median_per_filling_block": statistics.median(per_block.values()) if per_block else 0,
        "blocks_to_drain": blocks,
        "fills_per_second": round(fills / (blocks * block_time), 1) if blocks else 0.0,
        "gas_per_fill_at_most": round(gas_by_block[best] / per_block[best]) if best is not None else 0,
        "gas_of_that_block": gas_by_block[best] if best is not None else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--max-orders", default="40,500", help="the strategy's batch caps to run")
    parser.add_argument("--block-time", type=float, default=1.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    caps = [int(x) for x in args.max_orders.split(",")]
    rows = [drain(args.orders, cap, args.block_time) for cap in caps]
    m = machine()
    md = (
        f"Fill capacity, {m['date']}, {m['cores']} cores, "
        f"{BLOCK_GAS:,}-gas blocks every {args.block_time} s.\n"
        f"Command: `./dev bench capacity --orders {args.orders} --max-orders {args.max_orders} "
        f"--block-time {args.block_time}`.\n\n"
        "| batch cap (max_orders) | filled | most in one block | median per block | blocks to drain | "
        "fills/s | gas per fill at that batch | gas of that block |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    for r in rows:
        md += (
            f"| {r['max_orders']} | {r['filled']:,} of {r['orders']:,} | {r['most_in_one_block']} | "
            f"{r['median_per_filling_block']} | {r['blocks_to_drain']} | {r['fills_per_second']} | "
            f"{r['gas_per_fill_at_most']:,} | {r['gas_of_that_block']:,} |\n"
        )
    write_results("capacity", {"machine": m, "rows": rows}, md, args.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

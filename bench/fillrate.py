"""First-block fill rate: the whole devnet (anvil, relay, six keeper processes, traders placing
orders with triggers spread around the price, a moving market) for N blocks, judged by the
devnet's referee, once per block time.

python -m bench.fillrate [--blocks 300] [--orders-per-block 7] [--block-times 1,0.25]

"First block" is the block after the one whose state made the order executable (the best any
keeper can do); the referee checks every open order against the chain on every block with an
eth_call of the real fill, independently of the keepers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, write_results

FLOORS = {"first_block": 0.995, "within_two": 1.0}


def run(blocks: int, orders_per_block: int, block_time: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        summary = Path(d) / "summary.json"
        proc = subprocess.run(
            [sys.executable, "-m", "keepers.cli", "devnet", "--plain", "--blocks", str(blocks),
             "--orders-per-block", str(orders_per_block), "--block-time", str(block_time),
             "--seed", str(seed), "--workdir", str(Path(d) / "devnet"), "--summary-json", str(summary)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if not summary.exists():
            raise RuntimeError(f"the devnet did not finish: {(proc.stdout + proc.stderr)[-3000:]}")
        s = json.loads(summary.read_text())["chains"]["devnet"]
    late = s["late_fills"]
    # Every fill the referee judged (TWAP slices filled in the very block they fell due are not:
    # no block saw them executable before), by blocks from executable to filled; 1 is the best.
    hist = {int(k): v for k, v in s["latency_histogram"].items()}
    unfilled = len(s["unfilled_executable"])
    judged = sum(hist.values())
    due = judged + unfilled
    # Orders executable alone but not together (other fills on their pools in between): the
    # floor counts them in a column of their own, not as misses.
    shared = [m for m in late if "shared liquidity" in m["why"]]
    shared_in_two = sum(1 for m in shared if m["filled_block"] - m["executable_block"] <= 2)
    alone = due - len(shared)
    return {
        "block_time": block_time,
        "blocks": s["blocks"],
        "orders_placed": s["orders_placed_total"],
        "fills_judged": judged,
        "first_block": round(hist.get(1, 0) / due, 4) if due else None,
        "within_two": round((hist.get(1, 0) + hist.get(2, 0)) / due, 4) if due else None,
        "first_block_shared_apart": round(hist.get(1, 0) / alone, 4) if alone else None,
        "within_two_shared_apart": (
            round((hist.get(1, 0) + hist.get(2, 0) - shared_in_two) / alone, 4) if alone else None
        ),
        "latency_histogram": hist,
        "late_fills": len(late),
        "late_explained_by_shared_liquidity": sum(1 for m in late if "shared liquidity" in m["why"]),
        "unfilled_executable": unfilled,
        "fills_below_limit": len(s["fills_below_limit"]),
        "median_latency_blocks": s["median_latency_blocks"],
        "worst_latency_blocks": s["worst_latency_blocks"],
        "bundles": s["submitted"],
        "exit_code": proc.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=300)
    parser.add_argument("--orders-per-block", type=int, default=7)
    parser.add_argument("--block-times", default="1,0.25")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [
        run(args.blocks, args.orders_per_block, float(bt), args.seed) for bt in args.block_times.split(",")
    ]
    m = machine()
    cmd = (
        f"./dev bench fillrate --blocks {args.blocks} --orders-per-block {args.orders_per_block} "
        f"--block-times {args.block_times}"
    )
    md = [
        f"First-block fill rate, {m['date']}, {m['cores']} cores. Command: `{cmd}`.",
        "",
        "| block time | blocks | orders placed | fills judged | first block | within two "
        "| first block / within two, shared liquidity apart "
        "| late (shared liquidity) | unfilled | below limit | latency p50 / worst |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        md.append(
            f"| {r['block_time']:g} s | {r['blocks']} | {r['orders_placed']:,} | {r['fills_judged']:,} | "
            f"{_pct(r['first_block'])} | {_pct(r['within_two'])} | "
            f"{_pct(r['first_block_shared_apart'])} / {_pct(r['within_two_shared_apart'])} | "
            f"{r['late_fills']} ({r['late_explained_by_shared_liquidity']}) | {r['unfilled_executable']} | "
            f"{r['fills_below_limit']} | {r['median_latency_blocks']} / {r['worst_latency_blocks']} |"
        )
    md += [
        "",
        f"Floors: first block {FLOORS['first_block']:.1%}, within two blocks {FLOORS['within_two']:.0%}, "
        "with orders executable alone but not together (shared liquidity) apart.",
    ]
    text = "\n".join(md) + "\n"
    write_results("fillrate", {"machine": m, "floors": FLOORS, "rows": rows}, text, args.results_dir)
    print(text)
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


if __name__ == "__main__":
    raise SystemExit(main())

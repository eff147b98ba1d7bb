"""Every benchmark at the size docs/benchmarks.md reports, one after another (never two at once:
they would share the two cores and each would measure the other).

python -m bench.all [--only gas,nonces,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

#: The commands behind the figures in docs/benchmarks.md.
RUNS: dict[str, list[str]] = {
    "gas": [],
    "nonces": [],
    "catchup": ["--open", "100000", "--cancelled", "50000", "--idle-blocks", "20"],
    "capacity": ["--orders", "2000", "--max-orders", "40,500", "--block-time", "1"],
    "reaction": ["--open", "1000,10000,100000", "--crossing", "1,10,50", "--blocks", "200"],
    "fillrate": ["--blocks", "300", "--orders-per-block", "7", "--block-times", "1,0.25"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated subset")
    args = parser.parse_args()
    failed = []
    for name in args.only.split(","):
        t = time.monotonic()
        print(f"==> bench {name} {' '.join(RUNS[name])}", flush=True)
        code = subprocess.run([sys.executable, "-m", f"bench.{name}", *RUNS[name]], check=False).returncode
        print(f"<== bench {name}: exit {code} in {time.monotonic() - t:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

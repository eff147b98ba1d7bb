"""Nonce allocations per second with N processes sharing one signer, on SQLite and PostgreSQL,
with 5% random releases; every allocation checks its process's lease (fencing in the measured
path, as in production); duplicates and gaps are checked after each run.

    python -m bench.nonces [--processes 1 4 8] [--per-process 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.common import RESULTS, machine, write_results
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.tx.records import TxRecords

SIGNER = "0x00000000000000000000000000000000000000aa"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _run(url: str, processes: int, per_process: int) -> dict[str, Any]:
    migrate(make_engine(url))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.helpers.nonce_worker",
                url,
                "1",
                SIGNER,
                f"w{i}",
                str(per_process),
                str(i),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"worker failed on {url.split(':')[0]}")
        reports.append(json.loads(out))
    # From the first worker's first allocation to the last one's end: process start-up excluded.
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    nm = TxRecords(make_engine(url), 1, SIGNER)
    live = nm.live_nonces()
    duplicates = len(live) - len(set(live))
    for gap in nm.gaps():
        nm.claim_gap(gap, f"gap-{gap}", (0, 0), 0)
    live = nm.live_nonces()
    return {
        "processes": processes,
        "allocations": processes * per_process,
        "seconds": round(elapsed, 3),
        "per_second": round(processes * per_process / elapsed, 1),
        "duplicates": duplicates,
        "gaps_after_fill": 0 if live == list(range(len(live))) else 1,
    }


def _pg_url() -> tuple[str, Any]:
    name = f"keepers_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, (admin, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-process", type=int, default=500)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for n in args.processes:
        with tempfile.TemporaryDirectory() as d:
            rows.append({"database": "sqlite", **_run(f"sqlite:///{d}/n.sqlite", n, args.per_process)})
        try:
            url, (admin, name) = _pg_url()
        except Exception as exc:  # noqa: BLE001 - report and go on without PostgreSQL
            print(f"PostgreSQL unavailable: {exc.__class__.__name__}", file=sys.stderr)
            continue
        try:
            rows.append({"database": "postgresql", **_run(url, n, args.per_process)})
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    m = machine()
    md = [f"Nonce allocations, {m['date']}, {m['cores']} cores, each fenced by its process's lease. "
          "Command: `./dev bench nonces`.", "",
          "| database | processes | allocations | per second | duplicates | gaps after fill |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    md += [
        f"| {r['database']} | {r['processes']} | {r['allocations']} | {r['per_second']:,} | "
        f"{r['duplicates']} | {r['gaps_after_fill']} |"
        for r in rows
    ]
    text_md = "\n".join(md) + "\n"
    write_results("nonces", {"machine": m, "rows": rows}, text_md, args.results_dir)
    print(text_md)
    bad = [r for r in rows if r["duplicates"] or r["gaps_after_fill"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

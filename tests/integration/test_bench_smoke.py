"""The benchmarks run in the test command at full size when cheap, so they never rot.
Figures are not asserted here: gas is gated by the forge snapshot, floors by the bench itself.
bench/ is not installed (the wheel leaves it out): each runs from the repository, as ./dev bench runs it."""

import json
import subprocess
import sys

import pytest

from keepers.toolchain import REPO_ROOT

pytestmark = pytest.mark.integration


def test_gas_bench_runs_and_writes_both_sides(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gas", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gas.json").read_text())
    swap = result["rows"][0]
    assert swap["gas"] > 21_000
    assert swap["uniswap_v2"] > 21_000, "Uniswap V2's pair was deployed and measured in the same run"
    assert {"cores", "memory_gib", "python", "web3", "anvil"} <= set(result["machine"])
    assert "| operation | ours | Uniswap V2 |" in (tmp_path / "gas.md").read_text()


def test_nonce_catchup_and_capacity_benches_run_at_smoke_size(tmp_path):
    for args in (
        ["bench.nonces", "--processes", "2", "--per-process", "20"],
        ["bench.catchup", "--open", "60", "--cancelled", "20", "--idle-blocks", "2", "--block-time", "1"],
        ["bench.capacity", "--orders", "30", "--max-orders", "10", "--block-time", "1"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", *args, "--results-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=REPO_ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    nonces = json.loads((tmp_path / "nonces.json").read_text())
    assert all(r["duplicates"] == 0 and r["gaps_after_fill"] == 0 for r in nonces["rows"])
    (catchup,) = json.loads((tmp_path / "catchup.json").read_text())["rows"]
    assert catchup["events_applied"] >= 100, "60 placed, 20 placed and cancelled"
    assert catchup["first_fill_seconds"] > 0
    assert catchup["keeper_rss_mb"] > 0
    assert catchup["idle_blocks"] >= 2
    (capacity,) = json.loads((tmp_path / "capacity.json").read_text())["rows"]
    assert capacity["filled"] == 30, "the keeper drained the book"
    assert 0 < capacity["most_in_one_block"] <= 10, "never more than the batch cap"
    assert capacity["gas_per_fill_at_most"] > 0


def test_fill_rate_bench_runs_the_devnet_at_smoke_size(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fillrate", "--blocks", "8", "--orders-per-block", "2",
         "--block-times", "1", "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "fillrate.json").read_text())["rows"]
    assert row["blocks"] >= 8
    assert row["orders_placed"] > 0
    assert row["fills_below_limit"] == 0
    if row["first_block"] is not None:  # shared liquidity set apart can only raise the rate
        assert row["first_block_shared_apart"] >= row["first_block"]
    assert "| block time |" in (tmp_path / "fillrate.md").read_text()


def test_reaction_bench_measures_both_designs_at_smoke_size(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reaction", "--open", "50", "--crossing", "2", "--blocks", "3",
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "reaction.json").read_text())["rows"]
    assert row["measured"] == 3, "every block's bundle reached the relay"
    assert row["p50_ms"] > 0
    assert row["checker_ms_per_block"] > 0
    assert set(row["stage_p50_ms"]) >= {"market", "strategy", "simulate", "send"}

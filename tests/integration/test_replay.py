"""keepers replay: record a stretch of devnet history, then run strategies over it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from web3 import Web3

from keepers_workshop.replay import Recorder, Recording, ReplayError, replay
from keepers_workshop.testing import Devnet

pytestmark = pytest.mark.integration

E18 = 10**18
USDC = 10**6


@pytest.fixture
def history(keepers_devnet: Devnet, tmp_path) -> tuple[Recording, int, int]:
    """A limit order out of reach, then a swap that makes it executable, then quiet blocks."""
    d = keepers_devnet
    rec = Recorder(Web3(Web3.HTTPProvider(d.anvil.url)), d.deployment).start()
    oid = d.place("WETH/USDC", "limit", E18, 2_050 * USDC)
    d.mine()
    d.swap(d.pools("WETH", "USDC")[0], "USDC", 150_000 * USDC)
    executable = d.head
    d.mine(2)
    path = tmp_path / "history.json"
    rec.finish().save(path)
    return Recording.load(path), oid, executable


def test_replay_reports_the_fill_the_strategy_would_have_made(history, keepers_devnet: Devnet):
    recording, oid, executable = history
    weth = keepers_devnet.deployment.tokens["WETH"].lower()
    report = anyio_run(replay(recording, "best-execution", "limit-stop", {"native_token": weth}))
    first, *later = report.actions
    assert (first.block, first.order_ids, first.landed, first.repeat) == (executable, [oid], True, False)
    # History never saw this fill, so the order stays executable in it: later blocks repeat it.
    assert all(a.repeat for a in later)
    assert report.counted == [first]
    assert report.earned_wei > 0
    assert report.spent_wei > 0
    assert report.strategy_failures == 0


def test_replay_of_a_pickier_strategy_sends_nothing(history, keepers_devnet: Devnet):
    recording, _oid, _executable = history
    weth = keepers_devnet.deployment.tokens["WETH"].lower()
    params = {"native_token": weth, "min_fee_bps": 50}  # the order pays 10 bps
    report = anyio_run(replay(recording, "fee-maximising", "limit-stop", params))
    assert report.actions == []


def test_replay_cli_prints_the_report_and_a_bad_recording_is_named(history, tmp_path):
    recording, oid, _executable = history
    path = tmp_path / "h.json"
    recording.save(path)
    out = subprocess.run(
        [sys.executable, "-m", "keepers.cli", "replay", "run", str(path), "--kind", "limit-stop",
         "--strategy", "best-execution", "--json", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"orders [{oid}]" in out.stdout
    assert "would land 1" in out.stdout
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ReplayError, match=r"bad.json: not a recording"):
        Recording.load(tmp_path / "bad.json")


def anyio_run(coro):
    import anyio

    async def main():
        return await coro

    return anyio.run(main)

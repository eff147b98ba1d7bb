"""`keepers strategies show` prints a strategy's kind and params schema; `keepers strategies
new` scaffolds a plugin project whose own test passes as generated."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from keepers.cli import main
from keepers.strategies.limit_stop import FeeMaxParams


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_show_prints_the_kind_and_the_params_schema():
    code, out, _ = _cli("strategies", "show", "fee-maximising", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["kind"] == "limit-stop"
    assert info["target"] == "keepers.strategies.limit_stop:FeeMaximising"
    assert info["params_schema"] == FeeMaxParams.model_json_schema()
    assert {"min_fee_bps", "max_orders", "builder_share_bps"} <= set(info["params_schema"]["properties"])

    code, out, _ = _cli("strategies", "show", "fee-maximising")
    assert code == 0
    assert "kind limit-stop" in out
    assert '"min_fee_bps"' in out


def test_show_names_an_unknown_strategy():
    code, _, err = _cli("strategies", "show", "no-such-strategy")
    assert code != 0
    assert "no strategy named 'no-such-strategy'" in err


def test_new_scaffolds_a_plugin_whose_test_passes(tmp_path: Path):
    target = tmp_path / "fee-floor"
    code, out, _ = _cli("strategies", "new", "fee-floor", "--dir", str(target))
    assert code == 0, out
    pyproject = (target / "pyproject.toml").read_text()
    assert 'fee-floor = "fee_floor.strategy:FeeFloor"' in pyproject
    assert (target / "src/fee_floor/py.typed").exists()
    assert "keepers.sdk.testing" in (target / "tests/test_strategy.py").read_text()
    # The generated project's own tests, as its author would run them (not installed: the
    # generated pytest config puts src/ on the path).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=target, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout

    # Refuses a directory that is not empty, and a name that is not a plugin name.
    assert _cli("strategies", "new", "fee-floor", "--dir", str(target))[0] == 2
    assert _cli("strategies", "new", "Fee_Floor", "--dir", str(tmp_path / "x"))[0] == 2

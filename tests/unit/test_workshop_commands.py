"""`keepers devnet|relay|replay` come from the development workshop (keepers-workshop) through
the `keepers.commands` entry point group: registered when it is installed, and without it (the
production image) they exit 2 naming what to install; a broken add-on never takes the runtime's
own commands down. keepers.sdk.testing's devnet names say the same."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from importlib.metadata import EntryPoint

import pytest

from keepers import cli


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_the_installed_workshop_registers_its_commands():
    names = {ep.name: ep.value for ep in cli.entry_points(group=cli.COMMANDS_GROUP)}
    assert names == {
        "devnet": "keepers_workshop.commands:devnet",
        "relay": "keepers_workshop.commands:relay",
        "replay": "keepers_workshop.commands:replay",
    }
    assert set(names) == set(cli.WORKSHOP_COMMANDS)
    # Its own argument checks, not the stand-in's.
    code, _out, err = _cli("devnet", "--chains", "2", "--block-time", "0.5")
    assert (code, err) == (2, "keepers: error: --chains 2 needs a whole-second --block-time\n")


def test_without_the_workshop_its_commands_say_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    for argv in (["devnet", "--blocks", "3"], ["relay", "--anvil", "http://x"], ["replay", "run", "r.json"]):
        code, out, err = _cli(*argv)
        assert code == 2
        assert out == ""
        assert err == (
            f"keepers: error: keepers {argv[0]} is in the development workshop, the keepers-workshop"
            " distribution in this repository's workshop/ folder (./dev setup installs it)\n"
        )
    assert "needs keepers-workshop" in cli.build_parser().format_help()


def test_a_broken_add_on_does_not_take_the_runtime_down(monkeypatch: pytest.MonkeyPatch):
    broken = EntryPoint("devnet", "keepers_workshop.no_such_module:devnet", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    code, _out, err = _cli("devnet")
    assert code == 2
    assert "keepers devnet (keepers_workshop.no_such_module:devnet) did not load" in err
    assert _cli("strategies", "show", "fee-maximising", "--json")[0] == 0


def _watch_command_loads(monkeypatch: pytest.MonkeyPatch, loaded: list[str], register) -> None:
    """Records the command add-ons loaded (strategies load as usual) and hands out `register`."""
    real = EntryPoint.load

    def load(ep: EntryPoint):
        if ep.group != cli.COMMANDS_GROUP:
            return real(ep)
        loaded.append(ep.name)
        return register

    monkeypatch.setattr(EntryPoint, "load", load)


def test_an_add_on_never_replaces_a_command_and_a_failing_one_costs_only_itself(
    monkeypatch: pytest.MonkeyPatch,
):
    def half_registered(sub):  # adds its parser, then fails
        sub.add_parser("flaky")
        raise RuntimeError("broken after add_parser")

    eps = [
        EntryPoint("run", "evil:run", cli.COMMANDS_GROUP),  # a built-in's name
        EntryPoint("flaky", "flaky:register", cli.COMMANDS_GROUP),
    ]
    monkeypatch.setattr(cli, "entry_points", lambda group: eps)
    loaded: list[str] = []
    _watch_command_loads(monkeypatch, loaded, half_registered)
    assert "flaky" in cli.build_parser().format_help()
    assert loaded == ["flaky"], "the add-on named like a built-in was never loaded"
    assert _cli("strategies", "show", "fee-maximising", "--json")[0] == 0


def test_the_runtimes_own_commands_import_no_add_on(monkeypatch: pytest.MonkeyPatch):
    """`keepers run` holds the funds key until its signer starts: another distribution's code
    must not run in that process."""
    loaded: list[str] = []
    _watch_command_loads(monkeypatch, loaded, lambda sub: None)
    _cli("strategies", "show", "fee-maximising", "--json")
    _cli("config", "check", "/no/such.toml")
    assert loaded == []
    with pytest.raises(SystemExit):  # the stand-in registers nothing: argparse refuses it
        _cli("devnet")
    assert loaded == ["devnet", "relay", "replay"], "an add-on's command loads the add-ons"


def test_the_sdk_names_the_workshop_when_the_harness_is_missing():
    # A fresh interpreter where keepers_workshop cannot be imported (as in the image).
    probe = (
        "import sys; sys.modules['keepers_workshop'] = None\n"
        "from keepers.sdk.testing import MarketBuilder\n"
        "try:\n    from keepers.sdk.testing import Devnet\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "install keepers-workshop (workshop/ in the keepers repository)" in out.stdout, (
        out.stdout + out.stderr
    )

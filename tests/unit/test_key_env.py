"""keepers.tx.key_env takes the funds key's variables out of the environment on `keepers run`'s
first line, before its parser or config loader exist: it must find the file the parser will
take and the variables the loader will name, for every way of writing them, or the key stays
in the environment while libraries copy it (and `keepers run` then refuses to start)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepers import cli
from keepers.config import load_config
from keepers.tx import key_env

CONFIG = Path(__file__).parents[2] / "config" / "devnet.toml"
KEY = "0x" + "cd" * 32


@pytest.fixture(autouse=True)
def _nothing_held() -> Iterator[None]:
    key_env.release()
    yield
    key_env.release()


TOKENS = [
    "limit-stop",
    "--config",
    "--config=a.toml",
    "a.toml",
    "b.toml",
    "--conf",
    "--conf=b.toml",
    "--",
    "-x",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=6), st.sampled_from([None, "env.toml"]))
def test_the_config_file_is_the_one_the_parser_takes(args: list[str], default: str | None) -> None:
    environ = {key_env.CONFIG_ENV: default} if default else {}
    with pytest.MonkeyPatch.context() as mp:
        if default:
            mp.setenv(key_env.CONFIG_ENV, default)
        else:
            mp.delenv(key_env.CONFIG_ENV, raising=False)
        try:
            parsed = cli.build_parser(addons=False).parse_args(["run", *args])
        except SystemExit:
            return  # the parser refuses it: `keepers run` never starts
    expected = str(parsed.config) if parsed.config is not None else None
    assert key_env.config_path(args, environ) == expected


def _variables_of_loader(path: Path, environ: dict[str, str]) -> set[str]:
    settings = load_config(path, environ)
    names: set[str] = set()
    for name in settings.keepers:
        _, key = settings.signer_of(name)
        if key is not None:
            names |= set(key.variables)
    return names


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"KEEPERS__SIGNER__ENV": "OTHER_KEY"},
        {"KEEPERS__SIGNER__ENV": '"QUOTED_KEY"'},
        {"KEEPERS__SIGNER": '{ env = "INLINE_KEY" }'},
        {"KEEPERS__keepers__limit_stop__signer__env": "LOWER_KEY"},
        {"KEEPERS__KEEPERS__ORACLE__SIGNER": '{ keystore = "k.json", password_env = "PASSWORD" }'},
    ],
    ids=["file", "renamed", "quoted", "inline-table", "lowercase", "keeper-keystore"],
)
def test_the_variables_are_the_ones_the_loader_names(overrides: dict[str, str]) -> None:
    held = set(key_env.signer_variables(str(CONFIG), overrides))
    assert held >= _variables_of_loader(CONFIG, overrides)
    assert held, "control"


def test_an_unreadable_config_holds_nothing_and_raises_nothing(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opened, it would block: the loader reads it, not key_env
    for path in (deep, fifo, tmp_path / "missing.toml", tmp_path):
        assert key_env.signer_variables(str(path), {}) == []
    clash = {"KEEPERS__SIGNER__ENV__X": "Y"}  # a key inside a string
    assert key_env.signer_variables(str(CONFIG), clash) == []


def test_held_variables_leave_the_environment_and_come_back_one_signer_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_HELD_A", KEY)
    monkeypatch.setenv("TEST_HELD_B", KEY[::-1])
    key_env.hold(["TEST_HELD_A", "TEST_HELD_B", "TEST_NOT_SET"])
    assert "TEST_HELD_A" not in os.environ
    assert "TEST_HELD_B" not in os.environ
    assert key_env.is_held("TEST_HELD_A")
    assert not key_env.is_held("TEST_NOT_SET")
    if sys.platform.startswith("linux"):
        assert KEY.encode() not in Path("/proc/self/environ").read_bytes()
    held = key_env._HELD["TEST_HELD_A"]
    assert key_env.restore(["TEST_HELD_A", "TEST_NOT_SET"]) == ["TEST_HELD_A"]
    assert "TEST_HELD_B" not in os.environ, "another signer's key stays held"
    assert os.environb[b"TEST_HELD_A"] == KEY.encode()
    key_env.release()
    assert held == bytearray(len(KEY)), "zeroed"
    assert not key_env.is_held("TEST_HELD_A")


def test_run_refuses_a_key_variable_left_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a missed variable would mean (libraries copied it on import): not started."""
    monkeypatch.setenv("KEEPERS_SIGNER_KEY", KEY)
    assert cli.main(["run", "limit-stop", "--config", str(CONFIG)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "KEEPERS_SIGNER_KEY" in err
    assert "still in the environment" in err
    assert KEY[2:] not in err

"""`keepers run` checks its config before its signer takes the funds key out of the
environment: those checks must not decode the key's variable, whose str copy would stay in the
heap where plugins, loaded later, can read it (the hostile-plugin test found one there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keepers.config import load_config
from keepers.config.check import Locator, check_offline, keepers_to_check

CONFIG = Path(__file__).parents[2] / "config" / "devnet.toml"
KEY = "0x" + "ab" * 32


def test_the_checks_before_the_signer_starts_never_decode_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPERS_SIGNER_KEY", KEY)
    decoded: list[bytes] = []
    decode = os.environ.decodevalue

    def recording(value: bytes) -> str:
        decoded.append(value)
        return decode(value)

    monkeypatch.setattr(os.environ, "decodevalue", recording)
    # What keepers.cli._run does before SignerProcess.spawn.
    settings = load_config(CONFIG)
    where = Locator(CONFIG, os.environ)
    names, problems = keepers_to_check(settings, where, "limit-stop")
    problems += check_offline(settings, where, names, os.environ, read_funds_keys=False)
    assert not [p for p in problems if "KEEPERS_SIGNER_KEY" in str(p)], "the key counts as set"
    assert KEY.encode() not in decoded, "the key's variable was decoded into a str"
    monkeypatch.setenv("KEEPERS_SIGNER_KEY", "")
    problems = check_offline(settings, where, names, os.environ, read_funds_keys=False)
    assert [p for p in problems if "KEEPERS_SIGNER_KEY is not set" in str(p)], "an empty one does not"

"""Config: the example configs load; a corpus of broken ones is rejected naming the bad key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from eth_account import Account

from keepers.config import ConfigError, load_config
from keepers.config.secrets import SecretError, SecretRef
from keepers.toolchain import REPO_ROOT

GOOD = """\
database_url = "sqlite:///k.sqlite"
signer = { env = "SIGNER" }

[chains.main]
chain_id = 1
rpc = [{ url = "http://127.0.0.1:8545" }]
submission = "public"
contracts = { order_book = "0x0000000000000000000000000000000000000b00" }

[keepers.limit-stop]
chain = "main"
strategy = "best-execution"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "keepers.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["devnet", "mainnet", "polygon", "bsc"])
def test_example_configs_are_valid(name: str):
    settings = load_config(REPO_ROOT / "config" / f"{name}.toml", environ={})
    assert settings.chains


# (replacement applied to GOOD, key named in the error, line named in the error or None)
CORPUS = [
    ('database_url = "sqlite:///k.sqlite"', 'database_url = "mysql://x"', "database_url", 1),
    ("chain_id = 1", "chain_id = 0", "chains.main.chain_id", 5),
    ("chain_id = 1", 'chain_id = "one"', "chains.main.chain_id", 5),
    ('submission = "public"', 'submission = "carrier-pigeon"', "chains.main.submission", 7),
    ('submission = "public"', 'submission = "flashbots"', "chains.main", 4),
    ('submission = "public"', 'submission = "private"', "chains.main", 4),
    ('rpc = [{ url = "http://127.0.0.1:8545" }]', "rpc = []", "chains.main.rpc", 6),
    ('url = "http://127.0.0.1:8545"', 'url = "ftp://x"', "chains.main.rpc.0.url", 6),
    ('"0x0000000000000000000000000000000000000b00"', '"0xabc"', "chains.main.contracts.order_book", 8),
    ('contracts = { order_book = "0x0000000000000000000000000000000000000b00" }', "contracts = {}",
     "chains.main.contracts", 8),
    ('chain = "main"', 'chain = "moon"', "keepers", 10),
    ("[keepers.limit-stop]", "[keepers.limit-go]", "keepers", 10),
    ('strategy = "best-execution"', 'strategy = "x"\nretries = 3', "keepers.limit-stop.retries", 13),
    ('signer = { env = "SIGNER" }', 'signer = { env = "SIGNER", file = "/k" }', "signer", 2),
    ('signer = { env = "SIGNER" }', 'signer = { keystore = "/k.json" }', "signer", 2),
    ('signer = { env = "SIGNER" }', 'signer = "0xdeadbeef"', "signer", 2),
    ('signer = { env = "SIGNER" }', "", "(top level)", None),  # no signer, nor signer_url
    ("[chains.main]", "[chains.main]\nmax_fee_gwei = -1", "chains.main.max_fee_gwei", 5),
    ("[keepers.limit-stop]", '[keepers.limit-stop-polygon]\nkind = "limit-go"', "keepers", 10),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "key", "line"), CORPUS)
def test_broken_config_names_the_key(tmp_path: Path, old: str, new: str, key: str, line: int | None):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    problems = info.value.problems
    assert any(p.key == key or p.key.startswith(key) for p in problems), str(info.value)
    hit = next(p for p in problems if p.key == key or p.key.startswith(key))
    assert hit.file == str(path)
    assert hit.line == line, str(info.value)
    assert str(path) in str(info.value)


def test_one_kind_on_two_chains_by_naming_the_keepers(tmp_path: Path):
    side = """
[chains.side]
chain_id = 2
rpc = [{ url = "http://127.0.0.1:8546" }]
submission = "public"
contracts = { order_book = "0x0000000000000000000000000000000000000b00" }

[keepers.limit-stop-side]
kind = "limit-stop"
chain = "side"
strategy = "fee-maximising"
"""
    settings = load_config(_write(tmp_path, GOOD + side), environ={})
    assert settings.kind_of("limit-stop") == settings.kind_of("limit-stop-side") == "limit-stop"
    assert settings.keepers["limit-stop-side"].chain == "side"


def test_syntax_error_names_the_line(tmp_path: Path):
    path = _write(tmp_path, GOOD.replace("chain_id = 1", "chain_id = = 1"))
    with pytest.raises(ConfigError, match=r"keepers\.toml:5: \(syntax\)"):
        load_config(path, environ={})


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_environment_overrides_and_is_named_when_bad(tmp_path: Path):
    path = _write(tmp_path, GOOD)
    env = {"KEEPERS__CHAINS__MAIN__MAX_FEE_GWEI": "42", "KEEPERS__KEEPERS__LIMIT_STOP__ENABLED": "false"}
    settings = load_config(path, environ=env)
    assert settings.chains["main"].max_fee_gwei == 42
    assert settings.keepers["limit-stop"].enabled is False
    with pytest.raises(ConfigError, match=r"KEEPERS__CHAINS__MAIN__CHAIN_ID: chains\.main\.chain_id"):
        load_config(path, environ={"KEEPERS__CHAINS__MAIN__CHAIN_ID": "-5"})


def test_a_config_nested_too_deeply_or_an_override_inside_a_value_is_named(tmp_path: Path):
    path = _write(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n" + GOOD)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default (a plugin of the test run may raise it)
    try:
        with pytest.raises(ConfigError, match=r"keepers\.toml: \(syntax\): values nested too deeply"):
            load_config(path, environ={})
    finally:
        sys.setrecursionlimit(limit)
    path = _write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"KEEPERS__SIGNER__ENV__X: signer\.env\.x: sets a key inside"):
        load_config(path, environ={"KEEPERS__SIGNER__ENV__X": "1"})


def test_secrets_resolve_by_reference_and_never_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = "0x" + "11" * 32
    monkeypatch.setenv("K_ENV", key)
    assert SecretRef(env="K_ENV").resolve() == key
    (tmp_path / "k").write_text(key + "\n")
    (tmp_path / "k").chmod(0o644)
    with pytest.raises(SecretError, match="world-readable"):
        SecretRef(file=tmp_path / "k").resolve()
    (tmp_path / "k").chmod(0o640)
    assert SecretRef(file=tmp_path / "k").resolve() == key
    keystore = Account.encrypt(key, "pw", iterations=2)
    (tmp_path / "ks.json").write_text(json.dumps(keystore))
    (tmp_path / "pw").write_text("pw\n")
    for private in ("ks.json", "pw"):
        (tmp_path / private).chmod(0o600)
    assert SecretRef(keystore=tmp_path / "ks.json", password_file=tmp_path / "pw").resolve() == key
    (tmp_path / "pw").write_text("wrong")
    with pytest.raises(SecretError) as info:
        SecretRef(keystore=tmp_path / "ks.json", password_file=tmp_path / "pw").resolve()
    assert key[2:] not in str(info.value)
    with pytest.raises(SecretError, match="K_MISSING is not set"):
        SecretRef(env="K_MISSING").resolve()

"""`keepers config check` proves a deployment can start: a corpus of configs that load but
would fail at start, each refused naming its key and file; every shipped config (config/*.toml
and what the Helm chart renders) accepted; `keepers run` refusing the same files with the same
exit code; the CLI's one-line errors, KEEPERS_CONFIG, --json, and the store commands that never
migrate."""

from __future__ import annotations

import io
import json
import os
import tomllib
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from keepers.cli import main
from keepers.config.check import check_config
from keepers.config.loader import Problem
from keepers.store.engine import make_engine
from keepers.store.migrations import LATEST
from keepers.toolchain import REPO_ROOT

FUNDS = "0x" + "11" * 32
REPUTATION = "0x" + "22" * 32
BOOK = "0x0000000000000000000000000000000000000b00"

GOOD = """\
database_url = "sqlite:///{db}"
signer = {{ env = "SIGNER" }}

[chains.main]
chain_id = 1
rpc = [{{ url = "http://127.0.0.1:8545" }}]
ws_url = "ws://127.0.0.1:8545"
submission = "flashbots"
contracts = {{ deployment_file = "deployment.json" }}

[chains.main.flashbots]
relays = ["https://relay.example.org"]
reputation_key = {{ file = "reputation.key" }}

[keepers.limit-stop]
chain = "main"
strategy = "best-execution"
params = {{ max_orders = 40 }}

[keepers.oracle]
chain = "main"
strategy = "median"
enabled = false
"""

ENV = {"SIGNER": FUNDS}


def _secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding what GOOD references: a deployment file and a reputation key. The
    current directory: key file paths are relative to it (deployment_file to the config's)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deployment.json").write_text(json.dumps({"order_book": BOOK, "pools": []}))
    _secret_file(tmp_path / "reputation.key", REPUTATION)
    return tmp_path


def _write(workdir: Path, text: str) -> Path:
    path = workdir / "keepers.toml"
    path.write_text(text.replace("{db}", str(workdir / "store.sqlite")).replace("{{", "{").replace("}}", "}"))
    return path


def test_the_base_config_passes(workdir: Path) -> None:
    report = check_config(_write(workdir, GOOD), ENV)
    assert (report.problems, report.failures) == ([], [])
    assert report.keepers == ["limit-stop"], "a disabled keeper is not checked"
    assert report.exit_code == 0
    assert any(Account.from_key(FUNDS).address in n for n in report.notes)


# (replacement in GOOD, the key the problem must name, the line it must name or None)
CORPUS = [
    ('strategy = "best-execution"', 'strategy = "best-executoin"', "keepers.limit-stop.strategy", 17),
    ('strategy = "best-execution"', 'strategy = "median"', "keepers.limit-stop.strategy", 17),
    ("params = { max_orders = 40 }", "params = { min_profit_usd = 5 }",
     "keepers.limit-stop.params.min_profit_usd", 18),
    ("params = { max_orders = 40 }", "params = { max_orders = 0 }",
     "keepers.limit-stop.params.max_orders", 18),
    ("params = { max_orders = 40 }", 'params = { max_orders = "many" }',
     "keepers.limit-stop.params.max_orders", 18),
    ('ws_url = "ws://127.0.0.1:8545"', 'ws_url = "not a url"', "chains.main.ws_url", 7),
    ('ws_url = "ws://127.0.0.1:8545"', 'ws_url = "http://127.0.0.1:8545"', "chains.main.ws_url", 7),
    ('ws_url = "ws://127.0.0.1:8545"', 'ws_url = "ws://127.0.0.1:port"', "chains.main.ws_url", 7),
    ('url = "http://127.0.0.1:8545"', 'url = "http://"', "chains.main.rpc.0.url", 6),
    ('relays = ["https://relay.example.org"]', 'relays = ["ftp://relay.example.org"]',
     "chains.main.flashbots.relays.0", 12),
    ('deployment_file = "deployment.json"', 'deployment_file = "absent.json"',
     "chains.main.contracts.deployment_file", 9),
    ('deployment_file = "deployment.json"', 'deployment_file = "reputation.key"',
     "chains.main.contracts.deployment_file", 9),
    ('signer = { env = "SIGNER" }', 'signer = { env = "UNSET_SIGNER" }', "signer", 2),
    ('signer = { env = "SIGNER" }', 'signer = { file = "absent.key" }', "signer", 2),
    ('signer = { env = "SIGNER" }', 'signer = { file = "open.key" }', "signer", 2),  # world-readable
    ('signer = { env = "SIGNER" }', 'signer = { file = "garbage.key" }', "signer", 2),
    ('signer = { env = "SIGNER" }', 'signer = { keystore = "absent.json", password_env = "PW" }',
     "signer", 2),
    ('signer = { env = "SIGNER" }', 'signer_url = "http://"', "signer_url", 2),
    ('reputation_key = { file = "reputation.key" }', 'reputation_key = { env = "SIGNER" }',
     "chains.main.flashbots.reputation_key", 13),  # the funds key
    ('chain = "main"\nstrategy = "best-execution"',
     'chain = "main"\nstrategy = "best-execution"\nsigner = { env = "UNSET_OWN" }',
     "keepers.limit-stop.signer", 18),
    ("enabled = false", "enabled = true\nparams = { outlier = 3 }", "keepers.oracle.params.outlier", 24),
    # What the schema already refused still is, the same way.
    ('chain_id = 1', 'chain_id = 0', "chains.main.chain_id", 5),
    ('strategy = "best-execution"', 'strategy = "best-execution"\nretries = 3',
     "keepers.limit-stop.retries", 18),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "key", "line"), CORPUS)
def test_broken_config_is_refused_naming_its_key_and_file(
    workdir: Path, old: str, new: str, key: str, line: int | None
) -> None:
    assert old in GOOD.replace("{{", "{").replace("}}", "}")
    _secret_file(workdir / "open.key", FUNDS, 0o644)
    _secret_file(workdir / "garbage.key", "not-a-key-" + FUNDS[2:])
    path = _write(
        workdir,
        GOOD.replace(old.replace("{", "{{").replace("}", "}}"), new.replace("{", "{{").replace("}", "}}")),
    )
    report = check_config(path, ENV)
    assert report.exit_code == 2, report.as_json()
    hit = next((p for p in report.problems if p.key == key), None)
    assert hit is not None, [str(p) for p in report.problems]
    assert (hit.file, hit.line) == (str(path), line), str(hit)
    everything = json.dumps(report.as_json())
    assert FUNDS[2:] not in everything, "the funds key in the report"
    assert REPUTATION[2:] not in everything, "the reputation key in the report"


def test_an_environment_override_is_named_as_the_source(workdir: Path) -> None:
    env = {**ENV, "KEEPERS__KEEPERS__LIMIT_STOP__STRATEGY": "median"}
    (problem,) = check_config(_write(workdir, GOOD), env).problems
    assert problem == Problem(
        "KEEPERS__KEEPERS__LIMIT_STOP__STRATEGY", None, "keepers.limit-stop.strategy",
        "strategy 'median' serves 'oracle' keepers, this keeper is 'limit-stop'",
    )  # fmt: skip


def test_one_keeper_is_checked_for_what_it_needs(workdir: Path) -> None:
    bad_oracle = GOOD.replace("enabled = false", 'signer = { env = "UNSET_OWN" }')
    path = _write(workdir, bad_oracle)
    assert check_config(path, ENV, keeper="limit-stop").exit_code == 0
    assert [p.key for p in check_config(path, ENV, keeper="oracle").problems] == ["keepers.oracle.signer"]
    assert [p.key for p in check_config(path, ENV).problems] == ["keepers.oracle.signer"]
    assert [p.key for p in check_config(path, ENV, keeper="nope").problems] == ["keepers"]


# --- every shipped config passes -------------------------------------------------------------


def _provide(data: Mapping[str, Any], tmp: Path) -> dict[str, str]:
    """An environment in which the config's secrets and deployment files exist, as they would
    in its pod: env references set, file and keystore references pointed (by KEEPERS__
    overrides) at files of the same kind here."""
    env: dict[str, str] = {}
    refs: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(data.get("signer"), dict):
        refs.append(("KEEPERS__SIGNER", data["signer"]))
    for name, k in data.get("keepers", {}).items():
        if isinstance(k.get("signer"), dict):
            refs.append((f"KEEPERS__KEEPERS__{name.upper().replace('-', '_')}__SIGNER", k["signer"]))
    for name, c in data.get("chains", {}).items():
        prefix = f"KEEPERS__CHAINS__{name.upper()}"
        if "flashbots" in c:
            refs.append((f"{prefix}__FLASHBOTS__REPUTATION_KEY", c["flashbots"]["reputation_key"]))
        if "deployment_file" in c.get("contracts", {}):
            dep = tmp / f"{name}-deployment.json"
            dep.write_text(json.dumps({"order_book": BOOK}))
            env[f"{prefix}__CONTRACTS__DEPLOYMENT_FILE"] = str(dep)
    for i, (variable, ref) in enumerate(refs):
        key = "0x" + f"{i + 1:02x}" * 32
        if "env" in ref:
            env[ref["env"]] = key
        elif "file" in ref:
            env[variable] = f'{{ file = "{_secret_file(tmp / f"{i}.key", key)}" }}'
        else:
            keystore = _secret_file(
                tmp / f"{i}.json", json.dumps(Account.encrypt(bytes.fromhex(key[2:]), "pw", iterations=2))
            )
            if "password_env" in ref:
                env[ref["password_env"]] = "pw"
                env[variable] = f'{{ keystore = "{keystore}", password_env = "{ref["password_env"]}" }}'
            else:
                env[variable] = (
                    f'{{ keystore = "{keystore}", password_file = "{_secret_file(tmp / f"{i}.pw", "pw")}" }}'
                )
    return env


SHIPPED = sorted((REPO_ROOT / "config").glob("*.toml"))
ENVIRONMENT_KEYS = ("signer", "keepers.", "chains.")  # checked below: only secrets and files


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_passes(path: Path, tmp_path: Path) -> None:
    env = _provide(tomllib.loads(path.read_text()), tmp_path)
    report = check_config(path, env)
    assert report.exit_code == 0, [str(p) for p in report.problems]
    assert report.keepers, "it runs something"
    # Without its secrets and files, what is wrong is only that: strategies, params, kinds and
    # URLs are judged on the file alone.
    bare = check_config(path, {})
    for p in bare.problems:
        assert p.key.endswith(("signer", "reputation_key", "deployment_file")), str(p)


@pytest.fixture(scope="module")
def chart_configs() -> list[tuple[str, str]]:
    helm = pytest.importorskip("tests.unit.test_helm_chart")
    out = []
    every = [("default", {}), *((n.removesuffix("-values.yaml"), helm._values(n)) for n in helm.CI_VALUES)]
    for name, values in every:
        (cm,) = [
            c for c in helm.of_kind(helm.render(values), "ConfigMap") if "keepers.toml" in c.get("data", {})
        ]
        out.append((name, cm["data"]["keepers.toml"]))
    return out


def test_what_the_chart_renders_passes(chart_configs: list[tuple[str, str]], tmp_path: Path) -> None:
    for name, rendered in chart_configs:
        path = tmp_path / f"{name}.toml"
        path.write_text(rendered)
        env = {
            "KEEPERS__DATABASE_URL": "postgresql://keepers@db/keepers",
            "KEEPERS__CHAINS__MAINNET__RPC": '[{ url = "https://user:pw@rpc.example.org/v3/apikey" }]',
            **_provide(tomllib.loads(rendered), tmp_path),
        }
        report = check_config(path, env)
        assert report.exit_code == 0, (name, [str(p) for p in report.problems])
        assert "apikey" not in json.dumps(report.as_json())


# --- the CLI: one line per error, exit codes, KEEPERS_CONFIG, --json ------------------------


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNER", FUNDS)
    monkeypatch.delenv("KEEPERS_CONFIG", raising=False)
    for name in [n for n in os.environ if n.startswith("KEEPERS__")]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("params = {{ max_orders = 40 }}", "params = {{ min_profit_usd = 5 }}"),
        ('strategy = "best-execution"', 'strategy = "median"'),
        ('ws_url = "ws://127.0.0.1:8545"', 'ws_url = "not a url"'),
        ('reputation_key = {{ file = "reputation.key" }}', 'reputation_key = {{ env = "UNSET_REP" }}'),
        ("chain_id = 1", "chain_id = -1"),
    ],
)
def test_check_and_run_refuse_the_same_file_the_same_way(workdir: Path, old: str, new: str) -> None:
    # A signer already running: `run` starts no signer process of its own here.
    text = GOOD.replace(old, new).replace('signer = {{ env = "SIGNER" }}', 'signer_url = "unix:/absent.sock"')
    path = _write(workdir, text)
    check = _cli("config", "check", str(path))
    run = _cli("run", "limit-stop", "--config", str(path))
    assert check[0] == run[0] == 2, (check, run)
    assert check[2] == run[2], "the same one-line errors"
    assert check[2].startswith("keepers: error: ")
    assert str(path) in check[2]
    assert all(line.startswith("keepers: error: ") for line in check[2].splitlines())


@pytest.mark.usefixtures("cli_env")
def test_keepers_config_is_the_default_config(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cli("config", "check") == (
        2,
        "",
        "keepers: error: no config file: give --config FILE or set KEEPERS_CONFIG\n",
    )
    assert _cli("pnl")[0] == 2
    path = _write(workdir, GOOD)
    monkeypatch.setenv("KEEPERS_CONFIG", str(path))
    code, out, err = _cli("config", "check")
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{path}: ok")
    code, out, err = _cli("config", "check", "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["keepers"]["oracle"]["checked"]) == (0, True, False)
    assert FUNDS[2:] not in out
    assert REPUTATION[2:] not in out


@pytest.mark.usefixtures("cli_env")
def test_secrets_never_reach_the_terminal(workdir: Path) -> None:
    _secret_file(workdir / "garbage.key", "not-a-key-" + FUNDS[2:])
    path = _write(
        workdir, GOOD.replace('signer = {{ env = "SIGNER" }}', 'signer = {{ file = "garbage.key" }}')
    )
    for argv in (("config", "check", str(path)), ("config", "check", "--json", str(path))):
        code, out, err = _cli(*argv)
        assert code == 2
        assert FUNDS[2:] not in out + err
        assert "not-a-key" not in out + err


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    "url", ["wss://rpc.example.com:MYAPIKEY0123/", "wss://user:s3cr3t/MYAPIKEY0123@rpc.example.com/"]
)
def test_a_url_that_does_not_parse_is_refused_without_its_parts(workdir: Path, url: str) -> None:
    """urllib's message quotes the text it took for a port: an API key, or a password's tail."""
    path = _write(workdir, GOOD.replace('ws_url = "ws://127.0.0.1:8545"', f'ws_url = "{url}"'))
    for argv in (("config", "check", str(path)), ("config", "check", "--json", str(path))):
        code, out, err = _cli(*argv)
        assert code == 2
        assert "chains.main.ws_url" in out + err
        assert "MYAPIKEY0123" not in out + err


@pytest.mark.usefixtures("cli_env")
def test_store_commands_never_migrate_and_say_what_to_do(workdir: Path) -> None:
    path = _write(workdir, GOOD)
    store = workdir / "store.sqlite"
    code, _out, err = _cli("pnl", "--config", str(path))
    assert code == 1
    assert "keepers db migrate" in err
    assert err.count("\n") == 1, err
    assert not store.exists(), "a read-only command created the store"
    code, out, _err = _cli("db", "migrate", "--config", str(path))
    assert code == 0
    assert f"schema at version {LATEST}" in out
    assert "applied 1," in out
    assert _cli("db", "migrate", "--config", str(path))[1].endswith(
        f"nothing to apply; schema at version {LATEST}\n"
    )
    assert _cli("pnl", "--config", str(path), "--json") == (0, "[]\n", "")
    assert _cli("orders", "show", "5", "--config", str(path)) == (
        1, "", "keepers: error: no order 5 on main (chain 1) in the store\n"
    )  # fmt: skip
    engine = make_engine(f"sqlite:///{store}")
    with engine.begin() as conn:  # as an older release left it
        conn.execute(text("DELETE FROM schemaversion WHERE version = :v"), {"v": LATEST})
    code, _out, err = _cli("orders", "show", "5", "--config", str(path))
    assert code == 1
    assert f"run `keepers db migrate` (it applies {LATEST})" in err, err
    with engine.begin() as conn:  # as a newer release leaves it
        conn.execute(
            text(
                "INSERT INTO schemaversion (version, description, applied_at) VALUES (:v, 'x', '2030-01-01')"
            ),
            {"v": LATEST + 1},
        )
    for argv in (("pnl",), ("db", "migrate")):  # a keeper migrates as `db migrate` does: refused too
        code, _out, err = _cli(*argv, "--config", str(path))
        assert code == 1
        assert f"version {LATEST + 1}, newer than" in err, err
    engine.dispose()


# --- properties ------------------------------------------------------------------------------

_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
_KNOWN = {"max_orders", "native_token", "builder_share_bps", "priority_fee_gwei"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_IDENT.filter(lambda k: k not in _KNOWN), value=st.integers(0, 10**6))
def test_any_unknown_param_is_named(workdir: Path, key: str, value: int) -> None:
    path = _write(workdir, GOOD.replace("max_orders = 40", f"{key} = {value}"))
    problems = check_config(path, ENV).problems
    assert [(p.key, p.line) for p in problems] == [(f"keepers.limit-stop.params.{key}", 18)]
    assert problems[0].message.startswith("unknown key (strategy 'best-execution' takes: ")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=40))
def test_any_ws_url_is_accepted_or_named_never_a_crash(workdir: Path, url: str) -> None:
    path = _write(
        workdir,
        GOOD.replace('ws_url = "ws://127.0.0.1:8545"', f"ws_url = {json.dumps(url, ensure_ascii=False)}"),
    )
    report = check_config(path, ENV)
    keys = {p.key for p in report.problems}
    assert keys <= {"chains.main.ws_url"}, keys
    if not keys:
        assert url.startswith(("ws://", "wss://"))

"""`keepers config check --online` against a real anvil with the platform deployed: the chain
id of each RPC, the WebSocket and the relay, code at every contract address; an unreachable
endpoint is one line (exit 1) that shows no credentials."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from keepers.cli import main
from keepers_workshop.devnet.anvil import Anvil, free_port
from keepers_workshop.devnet.deploy import Deployment

FUNDS = "0x" + "11" * 32
REPUTATION = "0x" + "22" * 32

CONFIG = """\
database_url = "sqlite:///{tmp}/store.sqlite"
signer = {{ env = "SIGNER" }}

[chains.local]
chain_id = {chain_id}
rpc = [{{ url = "{rpc}" }}]
ws_url = "{ws}"
submission = "flashbots"
contracts = {contracts}

[chains.local.flashbots]
relays = ["{relay}"]
reputation_key = {{ env = "REPUTATION" }}

[keepers.limit-stop]
chain = "local"
strategy = "best-execution"
"""


@pytest.fixture
def write(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Path]:
    monkeypatch.setenv("SIGNER", FUNDS)
    monkeypatch.setenv("REPUTATION", REPUTATION)
    (tmp_path / "deployment.json").write_text(deployment.to_json())

    def _write(**overrides: object) -> Path:
        # anvil answers the relay's eth_chainId itself: reached, and on the right chain.
        values: dict[str, object] = {
            "tmp": tmp_path, "chain_id": 31337, "rpc": anvil.url, "ws": anvil.ws_url, "relay": anvil.url,
            "contracts": '{ deployment_file = "deployment.json" }',
        }  # fmt: skip
        path = tmp_path / "keepers.toml"
        path.write_text(CONFIG.format(**{**values, **overrides}))
        return path

    return _write


def _check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["config", "check", "--online", str(path)])
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


Write = Callable[..., Path]


def test_a_deployment_that_can_start_passes(write: Write, anvil: Anvil) -> None:
    code, out, err = _check(write())
    assert (code, err) == (0, ""), err
    assert "offline and online" in out
    assert f"chains.local.rpc.0 (http://127.0.0.1:{anvil.port}): chain 31337" in out


def test_wrong_chain_id_is_named_on_every_endpoint(write: Write) -> None:
    code, _out, err = _check(write(chain_id=5))
    assert code == 1, err
    keys = [line.split(": ")[3] for line in err.splitlines()]
    assert keys == ["chains.local.rpc.0.url", "chains.local.ws_url", "chains.local.flashbots.relays.0"], err
    assert "reports chain id 31337" in err


def test_a_contract_without_code_is_named(write: Write, deployment: Deployment) -> None:
    nowhere = "0x00000000000000000000000000000000000b0b00"
    path = write(contracts=f'{{ order_book = "{deployment.order_book}", oracle = "{nowhere}" }}')
    code, _out, err = _check(path)
    assert code == 1
    assert err.splitlines() == [
        f"keepers: error: {path}:9: chains.local.contracts.oracle: "
        f"oracle {nowhere} has no code on chain 31337"
    ]


def test_unreachable_endpoints_are_one_line_each_without_credentials(write: Write) -> None:
    port = free_port()  # nothing listens there
    code, out, err = _check(
        write(
            rpc=f"http://user:hunter2@127.0.0.1:{port}/v3/apikey",
            ws=f"ws://127.0.0.1:{port}/apikey",
            relay=f"http://127.0.0.1:{port}/apikey",
        )
    )
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert all(line.startswith("keepers: error: ") for line in lines), err
    assert all("unreachable" in line for line in lines), err
    assert "hunter2" not in out + err
    assert "apikey" not in out + err

"""A platform on anvil behind the local relay, and `keepers run` as a real process on it: what
the engine, crash and fault tests start the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eth_account import Account
from web3 import Web3

from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil, free_port
from keepers_workshop.devnet.deploy import deploy_platform, write_deployment
from keepers_workshop.relay.server import RelayThread

PLUGINS = Path(__file__).resolve().parent.parent / "fixtures" / "plugins"
KEEPER_KEY = DEFAULT_KEYS[4]
KEEPER = Account.from_key(KEEPER_KEY)


@contextmanager
def relayed_chain(workdir: Path, block_time: float = 0.3) -> Iterator[tuple[Anvil, RelayThread]]:
    """The platform deployed on auto-mine (deployment.json in `workdir`), then anvil in manual
    mode behind the relay, which builds a block every `block_time` seconds."""
    with Anvil(extra_args=("--order", "fifo")) as a:
        w3 = Web3(Web3.HTTPProvider(a.url))
        write_deployment(deploy_platform(w3, DEFAULT_KEYS[0]), workdir / "deployment.json")
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        with RelayThread(a.url, free_port(), block_time) as r:
            yield a, r


def keeper_config(
    workdir: Path,
    relay_url: str,
    health_port: int,
    *,
    strategy: str = "test-transfer",
    database_url: str = "",
) -> Path:
    """A keepers.toml for one limit-stop keeper on the relayed chain (its own SQLite store
    unless `database_url` names another)."""
    cfg = workdir / "keepers.toml"
    cfg.write_text(
        f"""
database_url = "{database_url or f"sqlite:///{workdir / 'run.sqlite'}"}"
health_port = {health_port}
drain_timeout = 10
signer = {{ env = "TEST_SIGNER" }}
# The test plugins' transfers go to a sink, not to a platform contract.
signer_allowed_to = ["0x000000000000000000000000000000000000dEaD"]
order_api = {{ port = 0 }}  # any free port: tests run side by side

[chains.local]
chain_id = 31337
rpc = [{{ url = "{relay_url}" }}]
block_time = 0.3
submission = "flashbots"
confirmations = 2
contracts = {{ deployment_file = "{workdir / "deployment.json"}" }}

[chains.local.flashbots]
relays = ["{relay_url}"]
reputation_key = {{ env = "TEST_REPUTATION" }}

[keepers.limit-stop]
chain = "local"
strategy = "{strategy}"
"""
    )
    return cfg


def start_keeper(cfg: Path, log: Path | None = None, **env: str) -> subprocess.Popen[str]:
    """`keepers run limit-stop` with the test plugins importable and the keeper's key in env;
    its output to `log` if given (a pipe nobody reads fills up and stops the keeper), else pipes."""
    full = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
        "TEST_SIGNER": KEEPER_KEY,
        "TEST_REPUTATION": Account.create().key.hex(),
        **env,
    }
    out = log.open("w") if log is not None else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "keepers.cli", "run", "limit-stop", "--config", str(cfg)],
        env=full,
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
        text=True,
    )


def kill_tree(pid: int) -> list[int]:
    """kill -9 to `pid` and every process descended from it: a devnet's relay and keepers run
    in sessions of their own (a killpg misses them), and a devnet killed at a test's timeout
    would leave them loading the machine for the rest of the suite. Each is stopped first
    (SIGSTOP: a stopped process cannot start another) until a scan finds no new one, then
    all are killed. The pids killed."""
    stopped: list[int] = []
    while True:
        tree, todo = [], [pid]
        children = _children_by_parent()
        while todo:
            tree.append(todo.pop())
            todo += children.get(tree[-1], [])
        new = [p for p in tree if p not in stopped]
        if not new:
            break
        for p in new:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGSTOP)
        stopped += new
    for p in stopped:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return stopped


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children

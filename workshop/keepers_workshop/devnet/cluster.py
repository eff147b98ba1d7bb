"""The devnet's processes: the local relay and one keeper process per kind and chain, each
kind on its own funds key, from one config file written here exactly as an operator would
write it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families

from keepers.config.schema import KEEPER_KINDS
from keepers_workshop.devnet.anvil import anvil_key, free_port

#: Which built-in strategy each keeper kind runs on the devnet.
STRATEGIES = {
    "limit-stop": "best-execution",
    "twap": "on-schedule",
    "iceberg": "impact-bounded",
    "rebalancer": "drift-restoring",
    "liquidation": "max-profit",
    "oracle": "median",
}
#: anvil account index of each kind's funds key (0 deploys, 1-7 are users and the market).
KEY_INDEX = {"limit-stop": 9, "twap": 10, "iceberg": 11, "rebalancer": 12, "liquidation": 13, "oracle": 14}
ACCOUNTS = 20
#: Seconds before a keeper that died is started again; doubled for each death in a row (one
#: that ran STABLE_SECONDS starts over), up to RESTART_BACKOFF_MAX: a supervisor's backoff.
RESTART_BACKOFF, RESTART_BACKOFF_MAX, STABLE_SECONDS = 0.5, 8.0, 30.0
#: How often a restarted keeper's /readyz is asked until it is ready.
READY_POLL = 0.25


def keeper_address(kind: str) -> str:
    return str(Account.from_key(anvil_key(KEY_INDEX[kind])).address)


def _env_name(kind: str) -> str:
    return "KEEPERS_SIGNER_" + kind.upper().replace("-", "_")


@dataclass(frozen=True)
class ChainPlan:
    """One devnet chain: how it is named in the config, and how keepers submit on it."""

    name: str
    chain_id: int
    #: "flashbots": anvil mines only through the local relay (bundles); "public": anvil mines
    #: on an interval and keepers send to its mempool with EIP-1559 fee bumps.
    submission: str
    #: Keeper names on this chain are the kind plus this suffix (`[keepers.limit-stop-polygon]`).
    suffix: str = ""

    def keeper_name(self, kind: str) -> str:
        return kind + self.suffix


#: An Ethereum-like chain behind the Flashbots-protocol relay, then a Polygon-like one whose
#: keepers use the public mempool. `--chains N` runs the first N.
CHAINS = (
    ChainPlan("devnet", 31337, "flashbots"),
    ChainPlan("polygon", 31338, "public", "-polygon"),
)


@dataclass(frozen=True)
class ChainEndpoint:
    """Where one devnet chain answers, and what is deployed on it."""

    plan: ChainPlan
    url: str  # the relay for a flashbots chain, anvil itself for a public one
    deployment: Path
    native_token: str
    #: The node's WebSocket, for the keepers' new heads (pushed, not polled through the relay).
    ws_url: str | None = None


def write_config(
    path: Path,
    *,
    chains: list[ChainEndpoint],
    database_url: str,
    block_time: float,
    params: dict[str, dict[str, int]] | None = None,
) -> None:
    """One config file for every chain and keeper, as an operator would write it. `params` adds
    strategy parameters per keeper kind (the benchmarks raise `max_orders` with it)."""
    lines = [
        "# Written by `keepers devnet`: local chains, one key per keeper kind.",
        f'database_url = "{database_url}"',
        "drain_timeout = 10",
        'signer = { env = "KEEPERS_SIGNER_KEY" }',
    ]
    for c in chains:
        lines += [
            "",
            f"[chains.{c.plan.name}]",
            f"chain_id = {c.plan.chain_id}",
            f'rpc = [{{ url = "{c.url}", rate_limit = 2000 }}]',
            *([f'ws_url = "{c.ws_url}"'] if c.ws_url else []),
            f"block_time = {block_time}",
            f'submission = "{c.plan.submission}"',
            "confirmations = 0",
            "max_fee_gwei = 500",
            f'contracts = {{ deployment_file = "{c.deployment}" }}',
        ]
        if c.plan.submission == "flashbots":
            lines += [
                "",
                f"[chains.{c.plan.name}.flashbots]",
                f'relays = ["{c.url}"]',
                'reputation_key = { env = "KEEPERS_REPUTATION_KEY" }',
            ]
    for c in chains:
        for kind in KEEPER_KINDS:
            name = c.plan.keeper_name(kind)
            lines += ["", f"[keepers.{name}]"]
            if name != kind:
                lines.append(f'kind = "{kind}"')
            lines += [
                f'chain = "{c.plan.name}"',
                f'strategy = "{STRATEGIES[kind]}"',
                f'signer = {{ env = "{_env_name(kind)}" }}',
            ]
            if kind != "oracle":
                extra = "".join(f", {k} = {v}" for k, v in (params or {}).get(kind, {}).items())
                lines.append(f'params = {{ native_token = "{c.native_token}"{extra} }}')
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int | None = None
    log: Path | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: Supervision: restarts done, kills the devnet itself sent, exit codes of processes that
    #: died (not stopped by us), and when the dead one may start again.
    restarts: int = 0
    kills: int = 0
    deaths: list[int] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None
    backoff: float = RESTART_BACKOFF
    #: A restarted keeper not ready yet (its /readyz polled until it is), and the seconds each
    #: restart took from the new process's start to ready.
    coming_up: bool = False
    ready_after: list[float] = field(default_factory=list)
    polled_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str | None:
        """A keeper's order API (its own port), None for other processes."""
        port = self.env.get("KEEPERS__ORDER_API__PORT")
        return f"http://127.0.0.1:{port}" if port else None

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class KeeperHealth:
    name: str
    alive: bool
    ready: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.relay: Proc | None = None
        self.keepers: dict[str, Proc] = {}

    def _spawn(self, name: str, args: list[str], env: dict[str, str], port: int | None) -> Proc:
        log = self.logs / f"{name}.log"
        out = log.open("ab")
        popen = subprocess.Popen(
            [sys.executable, "-P", "-m", "keepers.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the devnet only; it stops the others in order
        )  # fmt: skip
        return Proc(name, popen, port, log, argv=args, env=env)

    def start_relay(self, anvil_url: str, block_time: float) -> str:
        port = free_port()
        self.relay = self._spawn(
            "relay", ["relay", "--anvil", anvil_url, "--port", str(port), "--block-time", str(block_time)],
            dict(os.environ), port,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.post(
                    self.relay.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}, timeout=2
                )
                return self.relay.url
            except requests.ConnectionError:
                if not self.relay.alive():
                    break
                time.sleep(0.1)
        raise RuntimeError(f"the relay did not start; see {self.relay.log}")

    def start_keepers(self, config: Path, names: list[str]) -> None:
        """One `keepers run NAME` process per configured keeper name."""
        base = dict(os.environ)
        base["KEEPERS_SIGNER_KEY"] = anvil_key(KEY_INDEX["limit-stop"])
        base["KEEPERS_REPUTATION_KEY"] = "0x" + os.urandom(32).hex()
        for kind in KEEPER_KINDS:
            base[_env_name(kind)] = anvil_key(KEY_INDEX[kind])
        for name in names:
            port = free_port()
            env = {**base, "KEEPERS__HEALTH_PORT": str(port), "KEEPERS__METRICS_PORT": str(port)}
            env["KEEPERS__ORDER_API__PORT"] = str(free_port())  # the order API: a port of its own
            self.keepers[name] = self._spawn(name, ["run", name, "--config", str(config)], env, port)

    def supervise(self) -> list[str]:
        """Starts again every keeper that died, after its backoff; the names restarted now."""
        now, restarted = time.monotonic(), []
        for name, proc in self.keepers.items():
            if proc.alive():
                continue
            if proc.restart_at is None:
                proc.deaths.append(proc.popen.returncode)
                if now - proc.started_at > STABLE_SECONDS:
                    proc.backoff = RESTART_BACKOFF
                proc.restart_at = now + proc.backoff
                proc.backoff = min(proc.backoff * 2, RESTART_BACKOFF_MAX)
            elif now >= proc.restart_at:
                fresh = self._spawn(name, proc.argv, proc.env, proc.port)
                proc.popen, proc.started_at, proc.restart_at = fresh.popen, now, None
                proc.restarts += 1
                proc.coming_up = True
                restarted.append(name)
        return restarted

    def back_up(self) -> list[str]:
        """The restarted keepers that answer /readyz 200 for the first time since their
        restart (each polled at most every READY_POLL seconds); their restart-to-ready time is
        recorded."""
        now, up = time.monotonic(), []
        for name, proc in self.keepers.items():
            if not proc.coming_up or not proc.alive() or now - proc.polled_at < READY_POLL:
                continue
            proc.polled_at = now
            if self.health(name, timeout=0.3).ready:  # the referee's loop waits meanwhile
                proc.coming_up = False
                proc.ready_after.append(time.monotonic() - proc.started_at)
                up.append(name)
        return up

    def revive_all(self, timeout: float = 60.0) -> bool:
        """Supervises until every keeper is up and ready again; whether any was not."""
        deadline, revived = time.monotonic() + timeout, False
        while time.monotonic() < deadline:
            revived |= bool(self.supervise())
            self.back_up()  # records their restart-to-ready times
            down = [p for p in self.keepers.values() if not p.alive() or p.restart_at is not None]
            down += [p for p in self.keepers.values() if p.coming_up]
            if not down and not self.wait_ready(5):
                return revived
            revived = True  # down, or up but not ready yet (restarted, catching up)
            time.sleep(0.2)
        return revived

    def kill_one(self, pick: Callable[[list[str]], str]) -> str | None:
        """kill -9 to one live keeper (chosen by `pick`): the fault the devnet can inject."""
        alive = [n for n, p in self.keepers.items() if p.alive()]
        if not alive:
            return None
        name = pick(alive)
        proc = self.keepers[name]
        proc.popen.kill()
        proc.kills += 1
        return name

    def wait_ready(self, timeout: float = 90.0) -> list[str]:
        """Waits until every keeper answers /readyz 200; returns the ones that did not."""
        deadline = time.monotonic() + timeout
        pending = set(self.keepers)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if self.health(name).ready:
                    pending.discard(name)
            time.sleep(0.2)
        return sorted(pending)

    def health(self, name: str, timeout: float = 1.0) -> KeeperHealth:
        proc = self.keepers[name]
        restarts = f" (restarted {proc.restarts}x)" if proc.restarts else ""
        if not proc.alive():
            return KeeperHealth(
                name, False, False, f"exited with {proc.popen.returncode}; restarting{restarts}"
            )
        try:
            r = requests.get(f"{proc.url}/readyz", timeout=timeout)
            body = r.json()
            return KeeperHealth(name, True, r.status_code == 200, str(body.get("reason", "")) + restarts)
        except (requests.RequestException, ValueError):
            return KeeperHealth(name, True, False, "not answering yet")

    def metrics(self, name: str) -> dict[str, float]:
        """The keeper's Prometheus samples, by `name{labels}`."""
        proc = self.keepers[name]
        try:
            text = requests.get(f"{proc.url}/metrics", timeout=2).text
        except requests.RequestException:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
        return out

    def stop_keepers(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM to every keeper (they drain in-flight work), then their exit codes."""
        for proc in self.keepers.values():
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, proc in self.keepers.items():
            try:
                codes[name] = proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
                codes[name] = None  # had to be killed
        return codes

    def stop(self) -> None:
        for proc in [*self.keepers.values(), *([self.relay] if self.relay else [])]:
            if proc.alive():
                proc.popen.terminate()
                try:
                    proc.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()

"""RPC faults (issue: reliability). Who attacks: nothing malicious, the world: a node that
refuses connections, rate-limits, answers HTML or half a JSON document, drops connections,
stalls, or stops following the chain. What must hold: the keeper process never exits for it,
says so (a log line and a metric per fault, readiness when the head goes stale), backs off,
and fills again once the node is back."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from eth_utils.crypto import keccak
from web3 import Web3

from keepers.chain.artifacts import abi_type, load_artifact
from keepers_workshop.devnet.anvil import free_port
from tests.helpers.fault_proxy import FaultProxy, Mode, TcpProxy
from tests.helpers.keeper_process import keeper_config, relayed_chain, start_keeper

pytestmark = pytest.mark.integration

SINK = Web3.to_checksum_address("0x000000000000000000000000000000000000dEaD")
FAULTS: list[Mode] = ["503", "429", "garbage", "truncated", "drop", "refuse", "latency", "behind", "bad-logs"]
#: A log the node makes up: an OrderBook event's topic over data its ABI cannot decode.
ORDER_PLACED = next(
    "0x" + keccak(text=f"{e['name']}({','.join(abi_type(p) for p in e['inputs'])})").hex()
    for e in load_artifact("OrderBook").abi
    if e.get("type") == "event" and e["name"] == "OrderPlaced"
)


NODE_SECRETS = ("n0de-passw0rd", "APIKEY0node31337")
RELAY_SECRETS = ("re1ay-passw0rd", "APIKEY0relay4242")


def _with_credentials(url: str, secrets: tuple[str, str]) -> str:
    """http://user:password@host:port/v3/apikey (the fault proxy ignores user and path)."""
    return url.replace("http://", f"http://keeper:{secrets[0]}@") + f"/v3/{secrets[1]}"


def _ready(port: int) -> tuple[int, str]:
    try:
        r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        return r.status_code, r.text
    except requests.RequestException as exc:
        return 0, str(exc)


def _metric(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {what}")


def _lands(chain: Web3) -> Callable[[], bool]:
    """True once the sink's balance rose from now: a keeper transfer landed."""
    before = chain.eth.get_balance(SINK)
    return lambda: chain.eth.get_balance(SINK) > before


def test_the_keeper_outlives_every_rpc_fault_and_fills_again(tmp_path: Path) -> None:
    port = free_port()
    with (
        relayed_chain(tmp_path) as (anvil, relay),
        FaultProxy(relay.url) as node,
        FaultProxy(relay.url) as relay_proxy,
    ):
        node.bad_log_topic = ORDER_PLACED
        node.bad_log_address = json.loads((tmp_path / "deployment.json").read_text())["order_book"]
        # URLs as providers hand them out, credentials in the user part and the path: neither
        # may reach a log line or a metric, whatever fails.
        node_url = _with_credentials(node.url, NODE_SECRETS)
        relay_url = _with_credentials(relay_proxy.url, RELAY_SECRETS)
        cfg = keeper_config(tmp_path, node_url, health_port=port)
        # Only the RPC goes through the faulty node; bundles go to the relay (through a proxy
        # that fails once, below).
        cfg.write_text(cfg.read_text().replace(f'relays = ["{node_url}"]', f'relays = ["{relay_url}"]'))
        log = tmp_path / "keeper.log"
        keeper = start_keeper(cfg, log=log)
        chain = Web3(Web3.HTTPProvider(anvil.url))
        try:
            _until("the keeper is ready", lambda: _ready(port)[0] == 200)
            _until("a transfer lands", _lands(chain))
            for fault in FAULTS:
                node.set(fault)
                time.sleep(3)
                if fault == "bad-logs":  # a read that keeps failing shows as falling behind
                    behind = lambda: _metric(port, "keepers_blocks_behind_head") > 0  # noqa: E731
                    _until("the keeper says it falls behind", behind, timeout=20)
                assert keeper.poll() is None, f"the keeper exited on {fault}: {log.read_text()[-2000:]}"
                node.set("pass")
                _until(f"a transfer lands after {fault}", _lands(chain))
            assert _metric(port, "keepers_head_poll_failures_total") > 0
            assert _metric(port, "keepers_rpc_errors_total") > 0
            relay_proxy.set("503")
            _until("a relay failure is logged", lambda: "no relay took the bundle" in log.read_text())
            relay_proxy.set("pass")
            metrics_text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

            # A node that stalls: answers never come. Readiness drops once the head is stale
            # (10 s at this block time), and comes back with the node.
            node.set("stall")
            # (It may first say it fell behind; the stale head is what must come.)
            stale = lambda: _ready(port)[0] == 503 and "no new head" in _ready(port)[1]  # noqa: E731
            _until("readiness drops on a stale head", stale, timeout=40)
            assert _metric(port, "keepers_head_age_seconds") > 10
            assert keeper.poll() is None
            node.set("pass")
            _until("ready again", lambda: _ready(port)[0] == 200, timeout=60)
            _until("a transfer lands after the stall", _lands(chain))
        finally:
            keeper.terminate()
            keeper.wait(timeout=60)
        text = log.read_text()
        assert keeper.returncode == 0, text[-3000:]
        assert "head poll failed; backing off" in text
        assert "malformed log" in text, "the made-up log was read, refused and retried"
        assert "Traceback" not in text, text[-3000:]
        leaked = [x for x in (*NODE_SECRETS, *RELAY_SECRETS) if x in text or x in metrics_text]
        assert leaked == [], f"RPC or relay credentials in the logs or metrics: {leaked}"


def test_a_websocket_that_falls_silent_is_left_for_polling(tmp_path: Path) -> None:
    """Heads by subscription through a pipe that goes quiet without closing: after 20 poll
    intervals (at least 10 s) of silence the keeper polls instead, says so, and fills again."""
    port = free_port()
    with relayed_chain(tmp_path) as (anvil, relay), TcpProxy(anvil.port) as pipe:
        cfg = keeper_config(tmp_path, relay.url, health_port=port)
        ws = f'ws_url = "ws://127.0.0.1:{pipe.port}"\n'
        cfg.write_text(cfg.read_text().replace("block_time = 0.3\n", "block_time = 0.3\n" + ws, 1))
        log = tmp_path / "keeper.log"
        keeper = start_keeper(cfg, log=log)
        chain = Web3(Web3.HTTPProvider(anvil.url))
        try:
            _until("the keeper is ready", lambda: _ready(port)[0] == 200)
            _until("a transfer lands", _lands(chain))
            pipe.silent = True
            notice = "websocket heads failed; polling"
            _until("the keeper notices the silence", lambda: notice in log.read_text(), timeout=60)
            _until("a transfer lands once it polls", _lands(chain), timeout=60)
            assert keeper.poll() is None
        finally:
            keeper.terminate()
            keeper.wait(timeout=60)
        text = log.read_text()
        assert keeper.returncode == 0, text[-3000:]
        assert "TimeoutError" in text

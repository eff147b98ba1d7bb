"""`keepers config check --online`: asks what the config points at. Each RPC endpoint and the
WebSocket report the configured chain id, the private endpoint and relays answer HTTP, and every
configured contract has code on the chain.

URLs are shown as scheme://host only and transport errors by kind only: an RPC URL's path or
userinfo is often an API key, and the HTTP library's messages quote the whole URL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import requests
from websockets.sync.client import connect

from keepers.config.check import Loc, Locator, contracts_of, shown_url
from keepers.config.loader import Problem
from keepers.config.schema import Settings


class _Unreachable(Exception):
    """The endpoint did not answer as a JSON-RPC server would; the message is safe to print."""


def _post(url: str, method: str, params: list[Any], timeout: float, *, any_answer: bool = False) -> Any:
    """The call's result. any_answer: an HTTP answer of any kind will do (relays and private
    endpoints may refuse unsigned or unknown methods); then None unless it is a result."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    try:
        resp = requests.post(url, json=body, timeout=timeout)
    except requests.Timeout:
        raise _Unreachable(f"no answer within {timeout:g}s") from None
    except requests.RequestException as exc:
        raise _Unreachable(f"unreachable ({exc.__class__.__name__})") from None
    if resp.status_code >= 500 or (resp.status_code >= 400 and not any_answer):
        raise _Unreachable(f"answered HTTP {resp.status_code}")
    try:
        answer = resp.json()
    except ValueError:
        if any_answer:
            return None
        raise _Unreachable("answered, but not with JSON-RPC") from None
    if isinstance(answer, dict) and "result" in answer:
        return answer["result"]
    if any_answer:
        return None
    raise _Unreachable(f"{method} failed: {_error_message(answer)}")


def _error_message(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message)[:200] if message else "no result"


def _ws_chain_id(url: str, timeout: float) -> int:
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    try:
        with connect(url, open_timeout=timeout, close_timeout=1) as ws:
            ws.send(request)
            answer = json.loads(ws.recv(timeout=timeout))
    except TimeoutError:
        raise _Unreachable(f"no answer within {timeout:g}s") from None
    except Exception as exc:  # noqa: BLE001 - the library's errors vary by version; all mean "not reached"
        raise _Unreachable(f"unreachable ({exc.__class__.__name__})") from None
    if not isinstance(answer, dict) or "result" not in answer:
        raise _Unreachable(f"eth_chainId failed: {_error_message(answer)}")
    return int(answer["result"], 16)


def check_online(
    settings: Settings, where: Locator, names: Sequence[str], *, timeout: float, notes: list[str]
) -> list[Problem]:
    """Failures of the chains the keepers `names` run on."""
    failures: list[Problem] = []

    def fail(loc: Loc, url: str, message: str) -> None:
        failures.append(where.problem(loc, f"{shown_url(url)}: {message}"))

    for c in dict.fromkeys(settings.keepers[n].chain for n in names):
        chain = settings.chains[c]
        reader: str | None = None  # an endpoint on the right chain, for the code checks
        for i, endpoint in enumerate(chain.rpc):
            loc: Loc = ("chains", c, "rpc", i, "url")
            try:
                got = int(_post(endpoint.url, "eth_chainId", [], timeout), 16)
            except (_Unreachable, TypeError, ValueError) as exc:
                fail(
                    loc, endpoint.url, str(exc) if isinstance(exc, _Unreachable) else "bad eth_chainId answer"
                )
                continue
            if got != chain.chain_id:
                fail(loc, endpoint.url, f"reports chain id {got}, chains.{c}.chain_id is {chain.chain_id}")
                continue
            reader = reader or endpoint.url
            notes.append(f"chains.{c}.rpc.{i} ({shown_url(endpoint.url)}): chain {got}")
        if chain.ws_url is not None:
            try:
                got = _ws_chain_id(chain.ws_url, timeout)
            except (_Unreachable, TypeError, ValueError) as exc:
                fail(("chains", c, "ws_url"), chain.ws_url, str(exc))
            else:
                if got != chain.chain_id:
                    fail(
                        ("chains", c, "ws_url"), chain.ws_url, f"reports chain id {got}, not {chain.chain_id}"
                    )
        answering: list[tuple[Loc, str]] = []
        if chain.private_rpc is not None:
            answering.append((("chains", c, "private_rpc"), chain.private_rpc))
        if chain.flashbots is not None:
            answering += [
                (("chains", c, "flashbots", "relays", i), str(u))
                for i, u in enumerate(chain.flashbots.relays)
            ]
        for loc, url in answering:
            try:
                got_id = _post(url, "eth_chainId", [], timeout, any_answer=True)
            except _Unreachable as exc:
                fail(loc, url, str(exc))
                continue
            if isinstance(got_id, str) and got_id.startswith("0x") and int(got_id, 16) != chain.chain_id:
                fail(loc, url, f"reports chain id {int(got_id, 16)}, not {chain.chain_id}")
        addrs = contracts_of(settings, c)
        if reader is None or addrs is None:
            continue  # no endpoint to ask, or no addresses: reported above
        base: Loc = ("chains", c, "contracts")
        from_file = chain.contracts.deployment_file is not None
        roles: list[tuple[Loc, str, str]] = [
            (base + (("deployment_file",) if from_file else (role,)), role, address)
            for role, address in addrs.as_dict().items()
        ]
        roles += [
            (base + (("deployment_file",) if from_file else ("pools", i)), f"pools[{i}]", address)
            for i, address in enumerate(addrs.pools)
        ]
        for loc, role, address in roles:
            try:
                code = _post(reader, "eth_getCode", [address, "latest"], timeout)
            except _Unreachable as exc:
                fail(loc, reader, str(exc))
                continue
            if not code or code in ("0x", "0x0"):
                failures.append(where.problem(loc, f"{role} {address} has no code on chain {chain.chain_id}"))
    return failures

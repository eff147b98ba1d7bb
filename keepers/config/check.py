"""`keepers config check`: proves a deployment can start, beyond what the schema can say.

The schema (loader) refuses a bad key; this refuses a file that loads and then fails at start:
an unknown strategy, a strategy of another kind, params its model refuses, a secret that does
not resolve, a missing or unreadable file, a URL that does not parse. With `online`, it also
asks each RPC, WebSocket and relay (the chain id matches, every configured contract has code).

What it finds is a list of `Problem`s naming the key and the file (or the environment variable
that set it), as the loader's own errors do. Offline problems are config errors (exit 2, what
`keepers run` refuses too); online ones are failures of the world the config points at (exit 1).
Secret values never appear in a problem, a note or the JSON report.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eth_account import Account
from pydantic import ValidationError

from keepers.config.contracts import ContractAddresses, contract_addresses
from keepers.config.loader import (
    ConfigError,
    Problem,
    _line_for,
    _without_value,
    key_lines,
    load_config,
)
from keepers.config.schema import Settings, _check_address
from keepers.config.secrets import SecretError, SecretRef
from keepers.env_overrides import ENV_PREFIX, apply_env
from keepers.tx import key_env

Loc = tuple[str | int, ...]


class Locator:
    """Where a key was set: the file and line, or the KEEPERS__ variable that overrode it."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        try:
            text = path.read_text()
            self.lines = key_lines(text)
            self.applied = apply_env(tomllib.loads(text), environ)
        except (OSError, ValueError, RecursionError):  # the loader has said so already
            self.lines, self.applied = {}, []

    def problem(self, loc: Loc, message: str) -> Problem:
        key = ".".join(str(p) for p in loc)
        env_key = next((a for a in self.applied if key.replace("-", "_").startswith(a)), None)
        if env_key:
            return Problem(f"{ENV_PREFIX}{env_key.upper().replace('.', '__')}", None, key, message)
        return Problem(str(self.path), _line_for(loc, self.lines), key, message)


@dataclass
class Report:
    """What `keepers config check` found."""

    file: str
    settings: Settings | None = None
    #: The keepers checked ([keepers.<name>] names).
    keepers: list[str] = field(default_factory=list)
    #: Config errors: `keepers run` refuses to start on any of these (exit 2).
    problems: list[Problem] = field(default_factory=list)
    #: Online failures: the config is sound but what it points at is not (exit 1).
    failures: list[Problem] = field(default_factory=list)
    #: Public facts worth showing: each key reference's address, each endpoint reached.
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.problems else 1 if self.failures else 0

    def as_json(self) -> dict[str, Any]:
        def rows(ps: list[Problem]) -> list[dict[str, Any]]:
            return [{"file": p.file, "line": p.line, "key": p.key, "message": p.message} for p in ps]

        out: dict[str, Any] = {
            "file": self.file,
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "problems": rows(self.problems),
            "failures": rows(self.failures),
            "notes": self.notes,
        }
        s = self.settings
        if s is not None:
            out["chains"] = {
                n: {"chain_id": c.chain_id, "rpc_endpoints": len(c.rpc), "submission": str(c.submission)}
                for n, c in s.chains.items()
            }
            out["keepers"] = {
                n: {
                    "kind": s.kind_of(n),
                    "chain": k.chain,
                    "strategy": k.strategy,
                    "enabled": k.enabled,
                    "checked": n in self.keepers,
                }
                for n, k in s.keepers.items()
            }
        return out


def shown_url(url: str) -> str:
    """scheme://host[:port] only: RPC URLs often carry an API key in their path or userinfo."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}"


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:  # its message quotes the URL's parts: a password or an API key
        return "not a URL: the port is not a number (or a password holds ':' or '/')"
    if parts.scheme not in schemes:
        return f"not a URL: needs {' or '.join(s + '://' for s in schemes)} and a host"
    if not parts.hostname or " " in url:
        return f"not a URL: {parts.scheme}:// without a valid host"
    return None


def check_strategies(settings: Settings, where: Locator, names: Iterable[str]) -> list[Problem]:
    """Each keeper's strategy is registered, loads, serves its kind, and takes its params."""
    # Imported here: this loads plugins, which `keepers run` does only once its key's variable
    # has left the environment (the signer process holds it).
    from keepers.engine.plugins import PluginError, strategy_class

    problems = []
    for name in names:
        ks, kind = settings.keepers[name], settings.kind_of(name)
        try:
            cls = strategy_class(ks.strategy)
        except PluginError as exc:
            problems.append(where.problem(("keepers", name, "strategy"), str(exc)))
            continue
        if cls.kind != kind:
            problems.append(
                where.problem(
                    ("keepers", name, "strategy"),
                    f"strategy {ks.strategy!r} serves {cls.kind!r} keepers, this keeper is {kind!r}",
                )
            )
            continue
        try:
            cls.Params.model_validate(ks.params)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc: Loc = ("keepers", name, "params", *err["loc"])
                message = _without_value(err["msg"].removeprefix("Value error, "), err["input"])
                if err["type"] == "extra_forbidden":
                    message = f"unknown key (strategy {ks.strategy!r} takes: {_param_names(cls.Params)})"
                problems.append(where.problem(loc, message))
    return problems


def _param_names(model: Any) -> str:
    return ", ".join(model.model_fields) or "no params"


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    """Whether `name` is set and not empty, without decoding its value: os.environ.get() makes
    a str copy of it, which stays in the heap after it is freed (`keepers run` asks before its
    signer takes the key out of the environment, and plugins load after)."""
    if environ is os.environ and key_env.is_held(name):
        return True  # `keepers run` holds it out of the environment for its signer
    if environ is os.environ and os.supports_bytes_environ:
        return bool(os.environb.get(os.fsencode(name)))
    return bool(environ.get(name))


def _present(ref: SecretRef, environ: Mapping[str, str]) -> str | None:
    """Why `ref` cannot resolve, judged without reading the secret (None: it looks fine)."""
    if ref.env is not None:
        return None if _is_set(environ, ref.env) else f"environment variable {ref.env} is not set"
    if ref.password_env is not None and not _is_set(environ, ref.password_env):
        return f"environment variable {ref.password_env} is not set"
    for path in (ref.file, ref.keystore, ref.password_file):
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        if mode & stat.S_IROTH:  # as SecretRef.resolve refuses it
            return f"{path} is world-readable (mode {stat.S_IMODE(mode):o}): chmod o-r it"
        if not os.access(path, os.R_OK):
            return f"cannot read {path}: Permission denied"
    return None


def _address_of(ref: SecretRef, environ: Mapping[str, str]) -> str:
    """The address of the key `ref` holds. Raises SecretError, naming the reference only."""
    value = ref.resolve(environ)
    try:
        return str(Account.from_key(value).address)
    except Exception:  # noqa: BLE001 - whatever the parser says may quote the value
        raise SecretError(f"{ref.describe()} does not hold a private key (32 bytes, hex)") from None


def _secret_refs(
    settings: Settings, names: Iterable[str]
) -> tuple[dict[Loc, SecretRef], dict[Loc, SecretRef]]:
    """(funds keys, other keys) the keepers `names` need, by the key that references them."""
    funds: dict[Loc, SecretRef] = {}
    others: dict[Loc, SecretRef] = {}
    for name in names:
        ks = settings.keepers[name]
        if ks.signer is not None:
            funds[("keepers", name, "signer")] = ks.signer
        elif ks.signer_url is None and settings.signer is not None:
            funds[("signer",)] = settings.signer
        fb = settings.chains[ks.chain].flashbots
        if fb is not None and settings.chains[ks.chain].submission == "flashbots":
            others[("chains", ks.chain, "flashbots", "reputation_key")] = fb.reputation_key
    return funds, others


def check_secrets(
    settings: Settings,
    where: Locator,
    names: Sequence[str],
    environ: Mapping[str, str],
    *,
    read_funds_keys: bool,
    notes: list[str] | None = None,
) -> list[Problem]:
    """Every secret the keepers need resolves to a key. `read_funds_keys=False` (what `keepers
    run` does: its key is for the signer process alone) checks funds keys without reading them."""
    funds, others = _secret_refs(settings, names)
    problems, addresses = [], {}
    for loc, ref in [*funds.items(), *others.items()]:
        if loc in funds and not read_funds_keys:
            if (why := _present(ref, environ)) is not None:
                problems.append(where.problem(loc, why))
            continue
        try:
            addresses[loc] = _address_of(ref, environ)
        except SecretError as exc:
            problems.append(where.problem(loc, str(exc)))
            continue
        if notes is not None:
            notes.append(f"{'.'.join(map(str, loc))} ({ref.describe()}): address {addresses[loc]}")
    # The runtime refuses a reputation key that is a funds key: the relay would learn the address.
    for name in names:
        chain = settings.keepers[name].chain
        rep = addresses.get(("chains", chain, "flashbots", "reputation_key"))
        own = ("keepers", name, "signer")
        fund = addresses.get(own if own in funds else ("signer",))
        if rep is not None and rep == fund:
            problems.append(
                where.problem(
                    ("chains", chain, "flashbots", "reputation_key"),
                    f"is the funds key of keepers.{name}: give the relays a key that holds nothing",
                )
            )
    return list(dict.fromkeys(problems))  # one per key, however many keepers share it


def check_files_and_urls(settings: Settings, where: Locator, names: Sequence[str]) -> list[Problem]:
    """Deployment files exist and name the contracts; every URL the keepers use parses."""
    problems = []
    for c in dict.fromkeys(settings.keepers[n].chain for n in names):
        chain = settings.chains[c]
        dep = chain.contracts.deployment_file
        if dep is not None and (why := _deployment_problem(dep)) is not None:
            problems.append(where.problem(("chains", c, "contracts", "deployment_file"), why))
        urls: list[tuple[Loc, str, tuple[str, ...]]] = [
            (("chains", c, "rpc", i, "url"), e.url, ("http", "https")) for i, e in enumerate(chain.rpc)
        ]
        if chain.ws_url is not None:
            urls.append((("chains", c, "ws_url"), chain.ws_url, ("ws", "wss")))
        if chain.private_rpc is not None:
            urls.append((("chains", c, "private_rpc"), chain.private_rpc, ("http", "https")))
        if chain.flashbots is not None:
            for i, relay in enumerate(chain.flashbots.relays):
                urls.append((("chains", c, "flashbots", "relays", i), str(relay), ("http", "https")))
        for loc, url, schemes in urls:
            if (why := _url_problem(url, schemes)) is not None:
                problems.append(where.problem(loc, why))
    for name in names:
        signer_url, _key = settings.signer_of(name)
        if signer_url is not None and signer_url.startswith("http"):
            own = settings.keepers[name].signer_url is not None
            at: Loc = ("keepers", name, "signer_url") if own else ("signer_url",)
            if (why := _url_problem(signer_url, ("http", "https"))) is not None:
                problems.append(where.problem(at, why))
    return list(dict.fromkeys(problems))


def _deployment_problem(path: Path) -> str | None:
    try:
        dep = json.loads(path.read_text())
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    except ValueError:
        return f"{path} is not JSON (a deployment file as `keepers devnet` writes one)"
    if not isinstance(dep, dict) or not isinstance(dep.get("order_book"), str):
        return f"{path} names no order_book"
    for role in ("order_book", "oracle", "lending_market", "vault", "flash_liquidator", "builder_tip"):
        if dep.get(role):
            try:
                _check_address(str(dep[role]))
            except ValueError as exc:
                return f"{path}: {role}: {exc}"
    return None


def check_offline(
    settings: Settings,
    where: Locator,
    names: Sequence[str],
    environ: Mapping[str, str],
    *,
    read_funds_keys: bool = True,
    notes: list[str] | None = None,
) -> list[Problem]:
    """Everything but the strategies (which load plugins) and the network."""
    return [
        *check_secrets(settings, where, names, environ, read_funds_keys=read_funds_keys, notes=notes),
        *check_files_and_urls(settings, where, names),
    ]


def keepers_to_check(settings: Settings, where: Locator, only: str | None) -> tuple[list[str], list[Problem]]:
    """Every enabled keeper, or the one named (as `keepers run NAME` would start it)."""
    if only is None:
        return [n for n, k in settings.keepers.items() if k.enabled], []
    if only not in settings.keepers:
        configured = ", ".join(settings.keepers) or "none"
        return [], [where.problem(("keepers",), f"no [keepers.{only}] (configured: {configured})")]
    if not settings.keepers[only].enabled:
        return [], [where.problem(("keepers", only, "enabled"), "false: this keeper is switched off")]
    return [only], []


def check_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    keeper: str | None = None,
    online: bool = False,
    timeout: float = 5.0,
) -> Report:
    """The whole check of a config file, for every enabled keeper or only `keeper`."""
    env = os.environ if environ is None else environ
    report = Report(str(path))
    try:
        settings = load_config(path, env)
    except ConfigError as exc:
        report.problems = exc.problems
        return report
    report.settings = settings
    where = Locator(path, env)
    names, report.problems = keepers_to_check(settings, where, keeper)
    report.keepers = names
    report.problems += check_strategies(settings, where, names)
    report.problems += check_offline(settings, where, names, env, notes=report.notes)
    if online:
        from keepers.config.online import check_online

        report.failures = check_online(settings, where, names, timeout=timeout, notes=report.notes)
    return report


def contracts_of(settings: Settings, chain: str) -> ContractAddresses | None:
    """The chain's contract addresses (None: its deployment file is unreadable, reported already)."""
    try:
        return contract_addresses(settings.chains[chain])
    except (OSError, ValueError, KeyError, TypeError):
        return None

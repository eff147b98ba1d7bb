"""The `keepers` command."""

# ruff: noqa: E402 - the funds key leaves the environment before the imports below
from __future__ import annotations

import sys

# isort: off
# `keepers run`: the funds key's variables leave the environment before any library is
# imported (some decode every variable into a str on import; keepers.tx.key_env says which).
from keepers.tx import key_env

key_env.hold_for(sys.argv[1:])
# isort: on

import argparse
import os
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from keepers import __version__
from keepers.config import ConfigError, load_config
from keepers.config.loader import Problem
from keepers.config.schema import KEEPER_KINDS, Settings
from keepers.engine.plugins import PluginError
from keepers.toolchain import ToolchainError

#: Exit codes (docs/operate/running.md): 0 ok; 1 a failure found in what a valid config
#: points at (an RPC or relay, the store, the signer, an order that is not there); 2 the command
#: line or the config is wrong (everything `keepers config check` finds offline).
EXIT_FAILED, EXIT_USAGE = 1, 2
#: The config file when --config is not given.
CONFIG_ENV = key_env.CONFIG_ENV
#: Where other distributions register subcommands: each entry point is a callable that takes the
#: `keepers` subparsers and adds its own. The development workshop (keepers-workshop: `keepers
#: devnet`, `relay`, `replay`) registers its commands there; the production image installs
#: keepers alone, where those commands say what to install.
COMMANDS_GROUP = "keepers.commands"
#: The workshop's subcommands, named here so that without keepers-workshop they say what to
#: install instead of argparse's "invalid choice".
WORKSHOP_COMMANDS = {
    "devnet": "the whole system locally: chain, relay, six keepers, traders, a moving market",
    "relay": "run the local Flashbots-protocol relay in front of anvil",
    "replay": "record chain history; run a strategy over a recording",
}
WORKSHOP = "keepers-workshop"

if TYPE_CHECKING:
    #: The `keepers` subparsers, as an entry point of COMMANDS_GROUP receives them.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _config_check(args: argparse.Namespace) -> int:
    import json

    from keepers.config.check import check_config

    report = check_config(args.config, keeper=args.keeper, online=args.online)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return report.exit_code
    for problem in [*report.problems, *report.failures]:
        error(str(problem))
    settings = report.settings
    if settings is None or report.exit_code:
        return report.exit_code
    checked = "offline and online" if args.online else "offline (--online also asks the RPCs and relays)"
    print(f"{args.config}: ok, {checked}")
    for name, chain in settings.chains.items():
        rpcs = len(chain.rpc)
        print(f"  chain {name}: id {chain.chain_id}, {rpcs} RPC endpoint(s), submission {chain.submission}")
    for name, k in settings.keepers.items():
        state = "checked" if name in report.keepers else "enabled" if k.enabled else "disabled"
        kind = "" if settings.kind_of(name) == name else f" ({settings.kind_of(name)})"
        print(f"  keeper {name}{kind}: strategy {k.strategy} on {k.chain} ({state})")
    signing = settings.signer_url or (settings.signer.describe() if settings.signer else "each keeper's own")
    print(f"  signer: {signing}; database: {settings.database_url.split(':', 1)[0]}")
    for note in report.notes:
        print(f"  {note}")
    return 0


def _signer_serve(args: argparse.Namespace) -> int:
    from keepers.tx.signer_service import main as serve_main

    return serve_main(args.args)


def _signer_address(args: argparse.Namespace) -> int:
    import anyio
    from eth_account import Account

    from keepers.config.secrets import SecretError
    from keepers.tx.remote_signer import RemoteSigner
    from keepers.tx.signer import SignerError

    settings = load_config(args.config)
    name = args.name or next(iter(settings.keepers), None)
    if name is None or name not in settings.keepers:
        error(f"{args.config}: no keeper {name!r}")
        return EXIT_USAGE
    url, key = settings.signer_of(name)
    try:
        if url is not None:
            chain_id = settings.chains[settings.keepers[name].chain].chain_id
            remote = RemoteSigner(url, chain_id)

            async def ask() -> str:
                try:
                    return await remote.connect()
                finally:
                    await remote.close()

            print(anyio.run(ask))
        else:
            assert key is not None
            print(Account.from_key(key.resolve()).address)
    except SecretError as exc:
        error(str(exc))
        return EXIT_USAGE
    except SignerError as exc:
        error(str(exc))
        return EXIT_FAILED
    return 0


def _key_variables_not_held(settings: Settings, name: str) -> list[Problem]:
    """A funds-key variable the keeper's signer reads that is still in the environment was
    missed by key_env.hold_for (a config that is not a regular file is not read then), and
    libraries imported since may have copied it into this process's heap: refused. Asked in
    os.environb, by name: `in os.environ` would decode the value."""
    if name not in settings.keepers:
        return []  # keepers_to_check says so
    _, key = settings.signer_of(name)
    variables = key.variables if key else []
    message = "was still in the environment when libraries were imported (give --config a regular file)"
    return [
        Problem(variable, None, "signer", message)
        for variable in variables if os.fsencode(variable) in os.environb
    ]  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    import anyio

    from keepers.config.check import Locator, check_offline, check_strategies, keepers_to_check
    from keepers.tx.signer_process import SignerProcess

    # What `keepers config check --keeper NAME` refuses, refused here the same way (exit 2),
    # before anything starts; only the funds key is checked without being read.
    try:
        settings = load_config(args.config)
        where = Locator(args.config, os.environ)
        names, problems = keepers_to_check(settings, where, args.name)
        problems += check_offline(settings, where, names, os.environ, read_funds_keys=False)
        problems += _key_variables_not_held(settings, args.name)
        if problems:
            raise ConfigError(problems)
        # The signer process starts before the runtime (and any plugin) is imported: libraries
        # that read the whole environment on import would otherwise copy a key variable first.
        child = SignerProcess.of_keeper(settings, args.name)
        if child is not None:
            child.spawn(fork=True)
    finally:
        key_env.release()  # the signer has the key (or, with signer_url, nobody here needs it)
    if problems := check_strategies(settings, where, names):
        if child is not None:
            child.close()
        raise ConfigError(problems)

    from keepers.obs.logging import configure_logging
    from keepers.runtime import run_keeper

    configure_logging(settings.log_level, keeper=args.name)
    anyio.run(run_keeper, settings, args.name, child)
    return 0


def _strategies_list(args: argparse.Namespace) -> int:
    import json

    from keepers.engine.plugins import PluginError, list_plugins

    plugins = list_plugins()
    if args.json:
        print(json.dumps([
            {"error": str(p)} if isinstance(p, PluginError) else
            {"name": p.name, "kind": p.kind, "target": p.target, "distribution": p.distribution,
             "version": p.version}
            for p in plugins
        ], indent=2))  # fmt: skip
        return 1 if any(isinstance(p, PluginError) for p in plugins) else 0
    if not plugins:
        print("no strategies registered under the keepers.strategies entry point group")
    failed = 0
    for p in plugins:
        if isinstance(p, PluginError):
            print(f"  BROKEN  {p}")
            failed += 1
        else:
            print(f"  {p.name:<22} kind {p.kind:<12} {p.target}  ({p.distribution} {p.version})")
    return 1 if failed else 0


def _strategies_show(args: argparse.Namespace) -> int:
    import json

    from keepers.engine.plugins import describe_strategy

    info = describe_strategy(args.name)  # a PluginError is reported by main
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}: kind {info['kind']}, {info['target']} ({info['distribution']} {info['version']})")
    print("params (JSON schema):")
    print(json.dumps(info["params_schema"], indent=2))
    return 0


def _strategies_new(args: argparse.Namespace) -> int:
    from keepers.sdk.scaffold import ScaffoldError, scaffold

    directory = Path(args.dir or args.name)
    try:
        written = scaffold(args.name, directory)
    except ScaffoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"  wrote {path}")
    print(f"next: cd {directory} && pip install -e . && pytest")
    return 0


def _shown_db(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL sqlalchemy cannot parse: show its scheme only
        return url.split(":", 1)[0] + "://..."


def _store_for(config: Path, chain: str | None) -> tuple[Engine, int, str]:
    """The config's database and the chain id to read, by chain name. Read-only: a store whose
    schema is not this package's is refused (SchemaError), never migrated from here."""
    from keepers.store.engine import make_engine
    from keepers.store.migrations import SchemaError, require_current

    settings = load_config(config)
    names = list(settings.chains)
    name = chain or names[0]
    if name not in settings.chains:
        raise ConfigError(
            [Problem(str(config), None, "chains", f"no chain {name!r} (have: {', '.join(names)})")]
        )
    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        # Connecting would create an empty file where the operator expected their store.
        raise SchemaError(f"no store at {url}: check database_url, or create it with `keepers db migrate`")
    engine = make_engine(url)
    require_current(engine)
    return engine, settings.chains[name].chain_id, name


def _order_id(text: str) -> int:
    """argparse type of an order id: a uint256 in plain decimal (int() would take -1, " 1",
    1_0, Unicode digits, and ids no store can hold)."""
    from keepers.store.order_status import parse_order_id

    order_id = parse_order_id(text)
    if order_id is None:
        shown = ascii(text)  # escaped and cut short: the argument may be anything
        shown = shown if len(shown) <= 42 else shown[:41] + "'..."
        raise argparse.ArgumentTypeError(f"{shown} is not an order id (a decimal integer below 2**256)")
    return order_id


def _orders_show(args: argparse.Namespace) -> int:
    import json

    from keepers.store.order_status import order_status

    engine, chain_id, name = _store_for(args.config, args.chain)
    view = order_status(engine, chain_id, args.order_id)
    if view is None:
        error(f"no order {args.order_id} on {name} (chain {chain_id}) in the store")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(view.as_json(), indent=2))
        return 0
    print(f"order {view.order_id} ({view.kind}) on {name}: {view.status}")
    print(f"  owner       {view.owner}")
    print(f"  amount in   {view.amount_in} (remaining {view.remaining}), min out {view.min_amount_out}")
    print(f"  keeper fee  {view.keeper_fee_bps} bps")
    print(f"  placed      block {view.placed_block}")
    print(f"  executable  {'block ' + str(view.executable_block) if view.executable_block else '-'}")
    print(f"  filled      {'block ' + str(view.filled_block) if view.filled_block else '-'}", end="")
    print(f" ({view.latency_blocks} block(s) after executable)" if view.latency_blocks is not None else "")
    if view.reorged_block is not None:
        print(f"  reorged     a fill was taken off the chain at block {view.reorged_block}")
    for f in view.fills:
        print(
            f"  fill        block {f.block} tx {f.tx_hash}: {f.amount_in} -> {f.amount_out} "
            f"(price {f.price_raw:.6g} raw units, keeper fee {f.keeper_fee}, keeper {f.keeper})"
        )
    return 0


def _pnl(args: argparse.Namespace) -> int:
    import datetime as dt

    from keepers.store.ledger import Ledger

    engine, _chain_id, _name = _store_for(args.config, None)
    since = dt.date.today() - dt.timedelta(days=args.days - 1) if args.days else None
    rows = Ledger(engine).pnl(since)
    if args.json:
        import json

        print(json.dumps([
            {"day": r.day.isoformat(), "chain_id": r.chain_id, "keeper": r.keeper, "strategy": r.strategy,
             "actions": r.actions, "landed": r.included, "earned_wei": r.earned_wei,
             "spent_wei": r.spent_wei, "net_wei": r.net_wei}
            for r in rows
        ], indent=2))  # fmt: skip
        return 0
    if not rows:
        print("no actions recorded")
        return 0
    header = f"{'day':<10} {'chain':>6} {'keeper':<12} {'strategy':<20} {'actions':>7} {'landed':>6}"
    print(f"{header} {'earned ETH':>12} {'spent ETH':>12} {'net ETH':>12}")
    for r in rows:
        print(
            f"{r.day.isoformat():<10} {r.chain_id:>6} {r.keeper:<12} {r.strategy:<20} {r.actions:>7} "
            f"{r.included:>6} {r.earned_wei / 1e18:>12.6f} {r.spent_wei / 1e18:>12.6f} "
            f"{r.net_wei / 1e18:>12.6f}"
        )
    return 0


def _db_migrate(args: argparse.Namespace) -> int:
    from keepers.store.engine import make_engine
    from keepers.store.migrations import LATEST, migrate

    settings = load_config(args.config)
    applied = migrate(make_engine(settings.database_url))
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"{_shown_db(settings.database_url)}: {done}; schema at version {LATEST}")
    return 0


def _add_registered_commands(sub: Subparsers) -> None:
    """The subcommands other distributions register (COMMANDS_GROUP); for a workshop command
    that is not installed, or does not load, one that says so and exits 2. Each entry point's
    module must import nothing heavy: it runs on every `keepers` command, `keepers run` too."""
    registered: set[str] = set()
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name):
        if ep.name in sub.choices:  # an add-on never replaces a command (nor a second add-on)
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # noqa: BLE001 - a broken add-on costs its own command only
            if ep.name not in sub.choices:
                _unavailable(sub, ep.name, f"keepers {ep.name} ({ep.value}) did not load: {exc!r}")
        registered.add(ep.name)
    for name, what in WORKSHOP_COMMANDS.items():
        if name not in registered:
            _unavailable(
                sub, name, f"keepers {name} is in the development workshop, the {WORKSHOP}"
                " distribution in this repository's workshop/ folder (./dev setup installs it)", what,
            )  # fmt: skip


def _unavailable(sub: Subparsers, name: str, message: str, what: str | None = None) -> None:
    parser = sub.add_parser(name, add_help=False, help=f"{what} (needs {WORKSHOP})" if what else message)

    def fail(_args: argparse.Namespace) -> int:
        error(message)
        return EXIT_USAGE

    # Whatever follows the command is not this parser's to judge (main lets it through).
    parser.set_defaults(func=fail, any_arguments=True)


def _default_config() -> Path | None:
    value = os.environ.get(CONFIG_ENV)
    return Path(value) if value else None


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=_default_config(), metavar="FILE",
        help=f"the config file (default: ${CONFIG_ENV})",
    )  # fmt: skip


def build_parser(addons: bool = True) -> argparse.ArgumentParser:
    """The `keepers` command; `addons=False` leaves out the commands other distributions
    register (COMMANDS_GROUP)."""
    parser = argparse.ArgumentParser(prog="keepers", description=__doc__)
    parser.add_argument("--version", action="version", version=f"keepers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="prove a config can start: keys, strategies and params, secrets, files, URLs"
    )
    check.add_argument(
        "config", nargs="?", type=Path, default=_default_config(), metavar="FILE",
        help="the config file (default: $KEEPERS_CONFIG)",
    )  # fmt: skip
    check.add_argument(
        "--keeper", metavar="NAME", help="only what `keepers run NAME` needs (default: every enabled keeper)"
    )
    check.add_argument(
        "--online", action="store_true",
        help="also ask each RPC, WebSocket and relay: chain id, and code at every contract address",
    )  # fmt: skip
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_config_check)

    # No abbreviated options: keepers.tx.key_env finds --config in argv before this parser exists.
    run = sub.add_parser("run", help="run one keeper process", allow_abbrev=False)
    kinds = ", ".join(KEEPER_KINDS)
    run.add_argument("name", help=f"a [keepers.<name>] of the config; by default its kind ({kinds})")
    _config_option(run)
    run.set_defaults(func=_run)

    strategies = sub.add_parser("strategies", help="strategy plugins")
    strategies_sub = strategies.add_subparsers(dest="strategies_command", required=True)
    listing = strategies_sub.add_parser("list", help="registered strategies, their kind, source and version")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_strategies_list)
    described = strategies_sub.add_parser("show", help="a strategy's kind and its params' JSON schema")
    described.add_argument("name", help="a registered strategy (see `keepers strategies list`)")
    described.add_argument("--json", action="store_true", help="print JSON")
    described.set_defaults(func=_strategies_show)
    new = strategies_sub.add_parser(
        "new", help="scaffold a strategy plugin project (entry point, module, test)"
    )
    new.add_argument("name", help="the strategy's name, lowercase and dashes (e.g. my-strategy)")
    new.add_argument("--dir", help="where to write it (new or empty; default: ./NAME)")
    new.set_defaults(func=_strategies_new)

    orders = sub.add_parser("orders", help="where traders' orders stand (from the keeper's store)")
    orders_sub = orders.add_subparsers(dest="orders_command", required=True)
    show = orders_sub.add_parser("show", help="one order: status, executable and fill blocks, fills")
    show.add_argument("order_id", type=_order_id)
    _config_option(show)
    show.add_argument("--chain", help="chain name in the config (default: the first)")
    show.add_argument("--json", action="store_true", help="print JSON (as the HTTP API does)")
    show.set_defaults(func=_orders_show)

    pnl = sub.add_parser("pnl", help="what each keeper and strategy earned and spent, per day")
    _config_option(pnl)
    pnl.add_argument("--days", type=int, default=0, help="only the last N days (default: all)")
    pnl.add_argument("--json", action="store_true", help="print JSON (amounts in wei)")
    pnl.set_defaults(func=_pnl)

    db = sub.add_parser("db", help="the store")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_migrate = db_sub.add_parser(
        "migrate", help="bring the store's schema to this release's (read-only commands never migrate)"
    )
    _config_option(db_migrate)
    db_migrate.set_defaults(func=_db_migrate)

    signer = sub.add_parser("signer", help="the process that holds a funds key (keepers never do)")
    signer_sub = signer.add_subparsers(dest="signer_command", required=True)
    serve = signer_sub.add_parser(
        "serve", add_help=False, help="serve eth_signTransaction on a Unix socket (--help for its options)"
    )
    serve.add_argument("args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=_signer_serve)
    address = signer_sub.add_parser("address", help="the address a keeper signs with")
    address.add_argument("name", nargs="?", help="a [keepers.<name>] (default: the first)")
    _config_option(address)
    address.set_defaults(func=_signer_address)
    if addons:
        _add_registered_commands(sub)
    return parser


def _builtin_command(argv: Sequence[str]) -> bool:
    """Whether argv names one of keepers' own commands (the only top-level option, --version,
    takes no value, so the first word that is no option is the command)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None:
        return False
    own = build_parser(addons=False)
    return any(
        first in action.choices for action in own._actions if isinstance(action, argparse._SubParsersAction)
    )


def error(message: str) -> None:
    """One line on stderr, as every `keepers` command reports a failure."""
    print(f"keepers: error: {message}", file=sys.stderr)


def _expected_failure(exc: BaseException) -> int | None:
    """The exit code of a failure an operator can fix, after printing it on one line per
    problem (None: a bug, which keeps its traceback). Imports here run only on the way out."""
    from sqlalchemy.exc import OperationalError

    from keepers.chain.rpc_pool import AllEndpointsFailed
    from keepers.config.secrets import SecretError
    from keepers.runtime import StartError
    from keepers.store.migrations import SchemaError
    from keepers.tx.signer import SignerError

    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:  # from anyio.run
        return _expected_failure(exc.exceptions[0])
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            error(str(problem))
        return EXIT_USAGE
    if isinstance(exc, SecretError | PluginError | ToolchainError):
        error(str(exc))
        return EXIT_USAGE
    if isinstance(exc, SchemaError | SignerError | StartError | AllEndpointsFailed):
        error(str(exc))
        return EXIT_FAILED
    if isinstance(exc, OperationalError):
        # The driver's first line (no password: it is not in the driver's messages), never
        # sqlalchemy's, which adds the SQL and a link.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else exc.__class__.__name__
        error(f"cannot use the store: {reason}")
        return EXIT_FAILED
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Another distribution's command module is imported only to run that command: never in
    # the process of `keepers run`, which holds the funds key until its signer has started.
    parser = build_parser(addons=not _builtin_command(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if "config" in vars(args) and args.config is None:
        error(f"no config file: give --config FILE or set {CONFIG_ENV}")
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except Exception as exc:  # sorted: an expected failure's one line, or a bug's traceback
        code = _expected_failure(exc)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())

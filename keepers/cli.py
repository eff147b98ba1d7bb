"""The `keepers` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine
from web3 import Web3

from keepers import __version__
from keepers.config import ConfigError, load_config
from keepers.config.loader import Problem
from keepers.config.schema import KEEPER_KINDS
from keepers.devnet.deploy import DeployError
from keepers.engine.plugins import PluginError
from keepers.toolchain import ToolchainError

#: Exit codes (docs/operate/running.md): 0 ok; 1 a failure found in what a valid config
#: points at (an RPC or relay, the store, the signer, an order that is not there); 2 the command
#: line or the config is wrong (everything `keepers config check` finds offline).
EXIT_FAILED, EXIT_USAGE = 1, 2
#: The config file when --config is not given.
CONFIG_ENV = "KEEPERS_CONFIG"


def _devnet(args: argparse.Namespace) -> int:
    from keepers.devnet.run import Options, main

    if args.chains > 1 and args.block_time != int(args.block_time):
        # The public chain's anvil mines on its own interval, which anvil takes in whole seconds.
        _error("--chains 2 needs a whole-second --block-time")
        return EXIT_USAGE
    if (args.reorg_every is not None and args.reorg_every < 1) or not 1 <= args.reorg_depth <= 64:
        _error("--reorg-every takes at least 1 block, --reorg-depth 1 to 64")
        return EXIT_USAGE
    return main(
        Options(
            workdir=args.workdir,
            block_time=args.block_time,
            blocks=args.blocks,
            plain=args.plain,
            seed=args.seed,
            metrics_snapshot=args.metrics_snapshot,
            summary_json=args.summary_json,
            orders_per_block=args.orders_per_block,
            chains=args.chains,
            kill_every=args.kill_every,
            database_url=args.database_url,
            reorg_every=args.reorg_every,
            reorg_depth=args.reorg_depth,
        )
    )


def _config_check(args: argparse.Namespace) -> int:
    import json

    from keepers.config.check import check_config

    report = check_config(args.config, keeper=args.keeper, online=args.online)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return report.exit_code
    for problem in [*report.problems, *report.failures]:
        _error(str(problem))
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
        _error(f"{args.config}: no keeper {name!r}")
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
        _error(str(exc))
        return EXIT_USAGE
    except SignerError as exc:
        _error(str(exc))
        return EXIT_FAILED
    return 0


def _run(args: argparse.Namespace) -> int:
    import anyio

    from keepers.config.check import Locator, check_offline, check_strategies, keepers_to_check
    from keepers.tx.signer_process import SignerProcess

    # What `keepers config check --keeper NAME` refuses, refused here the same way (exit 2),
    # before anything starts; only the funds key is checked without being read.
    settings = load_config(args.config)
    where = Locator(args.config, os.environ)
    names, problems = keepers_to_check(settings, where, args.name)
    problems += check_offline(settings, where, names, os.environ, read_funds_keys=False)
    if problems:
        raise ConfigError(problems)
    # The signer process starts before the runtime (and any plugin) is imported: libraries
    # that read the whole environment on import would otherwise copy a key variable first.
    child = SignerProcess.of_keeper(settings, args.name)
    if child is not None:
        child.spawn()
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
        _error(f"no order {args.order_id} on {name} (chain {chain_id}) in the store")
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


def _replay(args: argparse.Namespace) -> int:
    # keepers.replay is imported here, not at the top: it pulls in the whole runtime, and
    # `keepers run` moves its key out of the environment before that happens.
    from keepers.replay import ReplayError

    try:
        return _replay_record(args) if args.replay_command == "record" else _replay_run(args)
    except ReplayError as exc:
        _error(str(exc))
        return EXIT_USAGE


def _replay_record(args: argparse.Namespace) -> int:
    from keepers.devnet.deploy import Deployment
    from keepers.replay import Recorder

    w3 = Web3(Web3.HTTPProvider(args.rpc))
    rec = Recorder(w3, Deployment.from_json(args.deployment.read_text())).start()
    target = rec.start_block + args.blocks
    print(f"recording from block {rec.start_block} to {target} (state dumped)", flush=True)
    while int(w3.eth.block_number) < target:
        time.sleep(0.2)
    recording = rec.finish(target)
    recording.save(args.out)
    txs = sum(len(b.txs) for b in recording.blocks)
    print(f"wrote {args.out}: {len(recording.blocks)} blocks, {txs} transactions")
    return 0


def _replay_run(args: argparse.Namespace) -> int:
    import json

    import anyio

    from keepers.replay import Recording, replay

    recording = Recording.load(args.recording)
    params = json.loads(args.params) if args.params else {}
    report = anyio.run(lambda: replay(recording, args.strategy, args.kind, params))
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2))
    print(f"{args.strategy} ({args.kind}) over blocks {report.first_block}..{report.last_block}")
    for a in report.actions:
        verdict = ("lands" if not a.repeat else "repeat: already filled above") if a.landed else a.reason
        print(
            f"  block {a.block:>6}  {a.key:<32} orders {a.order_ids or '-'}  "
            f"value {a.expected_value_wei / 1e18:.6f} ETH  gas {a.gas_used:,}  {verdict}"
        )
    print(
        f"actions {len(report.actions)}, would land {len(report.counted)} (repeats not counted), "
        f"strategy failures {report.strategy_failures}; "
        f"earned {report.earned_wei / 1e18:.6f} ETH, gas {report.spent_wei / 1e18:.6f} ETH, "
        f"net {(report.earned_wei - report.spent_wei) / 1e18:.6f} ETH"
    )
    return 0


def _relay(args: argparse.Namespace) -> int:
    import asyncio

    from aiohttp import web

    from keepers.obs.logging import configure_logging
    from keepers.relay.server import Relay, make_app

    configure_logging("info", json=not sys.stderr.isatty(), component="relay")
    relay = Relay(args.anvil, args.block_time or None)
    web.run_app(make_app(relay), host=args.host, port=args.port, print=None, loop=asyncio.new_event_loop())
    return 0


def _default_config() -> Path | None:
    value = os.environ.get(CONFIG_ENV)
    return Path(value) if value else None


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=_default_config(), metavar="FILE",
        help=f"the config file (default: ${CONFIG_ENV})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keepers", description=__doc__)
    parser.add_argument("--version", action="version", version=f"keepers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    devnet = sub.add_parser(
        "devnet", help="the whole system locally: chain, relay, six keepers, traders, a moving market"
    )
    devnet.add_argument("--blocks", type=int, help="run this many blocks, print the summary and exit")
    devnet.add_argument("--block-time", type=float, default=1.0, help="seconds per block (default 1)")
    devnet.add_argument("--plain", action="store_true", help="one line per block (default off a TTY)")
    devnet.add_argument("--seed", type=int, default=7, help="seed of the traders and the market")
    devnet.add_argument("--orders-per-block", type=int, default=2)
    devnet.add_argument(
        "--chains", type=int, choices=(1, 2), default=1,
        help="2 adds a Polygon-like chain whose keepers use the public mempool with fee bumping",
    )  # fmt: skip
    devnet.add_argument(
        "--kill-every", type=float, metavar="SECONDS",
        help="kill -9 a random keeper this often; the devnet restarts it with backoff, as a supervisor would",
    )  # fmt: skip
    devnet.add_argument(
        "--reorg-every", type=int, metavar="BLOCKS",
        help="reorg the chain this often (anvil_reorg through the relay); the users and the referee follow",
    )  # fmt: skip
    devnet.add_argument(
        "--reorg-depth", type=int, default=3, metavar="D",
        help="each reorg replaces 1 to D blocks, drawn from --seed (default 3)",
    )  # fmt: skip
    devnet.add_argument(
        "--database-url", help="the keepers' store, e.g. postgresql://... (default: SQLite in the workdir)"
    )
    devnet.add_argument("--workdir", type=Path, default=Path(".devnet"), help="config, store, logs")
    devnet.add_argument("--metrics-snapshot", type=Path, help="write every keeper's metrics here at the end")
    devnet.add_argument("--summary-json", type=Path, help="write the summary here as JSON")
    devnet.set_defaults(func=_devnet)

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

    run = sub.add_parser("run", help="run one keeper process")
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

    rep = sub.add_parser("replay", help="record chain history; run a strategy over a recording")
    rep_sub = rep.add_subparsers(dest="replay_command", required=True)
    record = rep_sub.add_parser("record", help="dump an anvil node's state, then record N blocks")
    record.add_argument("--rpc", required=True, help="an anvil node (anvil_dumpState)")
    record.add_argument("--deployment", type=Path, required=True, help="deployment.json of the platform")
    record.add_argument("--blocks", type=int, default=100)
    record.add_argument("--out", type=Path, required=True)
    record.set_defaults(func=_replay)
    rrun = rep_sub.add_parser("run", help="what a strategy would have done and earned over a recording")
    rrun.add_argument("recording", type=Path)
    rrun.add_argument("--kind", choices=KEEPER_KINDS, required=True)
    rrun.add_argument("--strategy", required=True)
    rrun.add_argument("--params", help="the strategy's params as JSON")
    rrun.add_argument("--json", type=Path, help="also write the report as JSON here")
    rrun.set_defaults(func=_replay)

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

    relay = sub.add_parser("relay", help="run the local Flashbots-protocol relay in front of anvil")
    relay.add_argument("--anvil", required=True, help="anvil URL (started with --no-mining --order fifo)")
    relay.add_argument("--host", default="127.0.0.1")
    relay.add_argument("--port", type=int, default=8546)
    relay.add_argument(
        "--block-time", type=float, default=1.0, help="seconds per block; 0 = on relay_buildBlock"
    )
    relay.set_defaults(func=_relay)
    return parser


def _error(message: str) -> None:
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
            _error(str(problem))
        return EXIT_USAGE
    if isinstance(exc, SecretError | PluginError | ToolchainError | DeployError):
        _error(str(exc))
        return EXIT_USAGE
    if isinstance(exc, SchemaError | SignerError | StartError | AllEndpointsFailed):
        _error(str(exc))
        return EXIT_FAILED
    if isinstance(exc, OperationalError):
        # The driver's first line (no password: it is not in the driver's messages), never
        # sqlalchemy's, which adds the SQL and a link.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else exc.__class__.__name__
        _error(f"cannot use the store: {reason}")
        return EXIT_FAILED
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "config" in vars(args) and args.config is None:
        _error(f"no config file: give --config FILE or set {CONFIG_ENV}")
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

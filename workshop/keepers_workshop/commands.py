"""The workshop's `keepers` subcommands: `devnet`, `relay` and `replay`, registered under the
`keepers.commands` entry point group (workshop/pyproject.toml), which `keepers.cli` reads.

The `keepers` command loads this module on every run, `keepers run` too, before that command
moves its key out of the environment: so it imports argparse and keepers.cli's constants only,
and each command imports what it runs when it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keepers.cli import EXIT_USAGE, error
from keepers.config.schema import KEEPER_KINDS

if TYPE_CHECKING:
    from keepers.cli import Subparsers


def devnet(sub: Subparsers) -> None:
    """`keepers devnet`: the whole system on this machine."""
    parser = sub.add_parser(
        "devnet", help="the whole system locally: chain, relay, six keepers, traders, a moving market"
    )
    parser.add_argument("--blocks", type=int, help="run this many blocks, print the summary and exit")
    parser.add_argument("--block-time", type=float, default=1.0, help="seconds per block (default 1)")
    parser.add_argument("--plain", action="store_true", help="one line per block (default off a TTY)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the traders and the market")
    parser.add_argument("--orders-per-block", type=int, default=2)
    parser.add_argument(
        "--chains", type=int, choices=(1, 2), default=1,
        help="2 adds a Polygon-like chain whose keepers use the public mempool with fee bumping",
    )  # fmt: skip
    parser.add_argument(
        "--kill-every", type=float, metavar="SECONDS",
        help="kill -9 a random keeper this often; the devnet restarts it with backoff, as a supervisor would",
    )  # fmt: skip
    parser.add_argument(
        "--reorg-every", type=int, metavar="BLOCKS",
        help="reorg the chain this often (anvil_reorg through the relay); the users and the referee follow",
    )  # fmt: skip
    parser.add_argument(
        "--reorg-depth", type=int, default=3, metavar="D",
        help="each reorg replaces 1 to D blocks, drawn from --seed (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--database-url", help="the keepers' store, e.g. postgresql://... (default: SQLite in the workdir)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(".devnet"), help="config, store, logs")
    parser.add_argument("--metrics-snapshot", type=Path, help="write every keeper's metrics here at the end")
    parser.add_argument("--summary-json", type=Path, help="write the summary here as JSON")
    parser.set_defaults(func=_devnet)


def relay(sub: Subparsers) -> None:
    """`keepers relay`: the local Flashbots-protocol relay, on its own."""
    parser = sub.add_parser("relay", help="run the local Flashbots-protocol relay in front of anvil")
    parser.add_argument("--anvil", required=True, help="anvil URL (started with --no-mining --order fifo)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8546)
    parser.add_argument(
        "--block-time", type=float, default=1.0, help="seconds per block; 0 = on relay_buildBlock"
    )
    parser.set_defaults(func=_relay)


def replay(sub: Subparsers) -> None:
    """`keepers replay record|run`: a strategy over recorded chain history, on anvil."""
    parser = sub.add_parser("replay", help="record chain history; run a strategy over a recording")
    replay_sub = parser.add_subparsers(dest="replay_command", required=True)
    record = replay_sub.add_parser("record", help="dump an anvil node's state, then record N blocks")
    record.add_argument("--rpc", required=True, help="an anvil node (anvil_dumpState)")
    record.add_argument("--deployment", type=Path, required=True, help="deployment.json of the platform")
    record.add_argument("--blocks", type=int, default=100)
    record.add_argument("--out", type=Path, required=True)
    record.set_defaults(func=_replay)
    run = replay_sub.add_parser("run", help="what a strategy would have done and earned over a recording")
    run.add_argument("recording", type=Path)
    run.add_argument("--kind", choices=KEEPER_KINDS, required=True)
    run.add_argument("--strategy", required=True)
    run.add_argument("--params", help="the strategy's params as JSON")
    run.add_argument("--json", type=Path, help="also write the report as JSON here")
    run.set_defaults(func=_replay)


def _devnet(args: argparse.Namespace) -> int:
    from keepers_workshop.devnet.deploy import DeployError
    from keepers_workshop.devnet.run import Options, main

    if args.chains > 1 and args.block_time != int(args.block_time):
        # The public chain's anvil mines on its own interval, which anvil takes in whole seconds.
        error("--chains 2 needs a whole-second --block-time")
        return EXIT_USAGE
    if (args.reorg_every is not None and args.reorg_every < 1) or not 1 <= args.reorg_depth <= 64:
        error("--reorg-every takes at least 1 block, --reorg-depth 1 to 64")
        return EXIT_USAGE
    try:
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
    except DeployError as exc:  # the platform did not deploy: the contracts' own reason, one line
        error(str(exc))
        return EXIT_USAGE


def _replay(args: argparse.Namespace) -> int:
    from keepers_workshop.replay import ReplayError

    try:
        return _replay_record(args) if args.replay_command == "record" else _replay_run(args)
    except ReplayError as exc:
        error(str(exc))
        return EXIT_USAGE


def _replay_record(args: argparse.Namespace) -> int:
    from web3 import Web3

    from keepers_workshop.devnet.deploy import Deployment
    from keepers_workshop.replay import Recorder

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

    from keepers_workshop.replay import Recording
    from keepers_workshop.replay import replay as replay_recording

    recording = Recording.load(args.recording)
    params = json.loads(args.params) if args.params else {}
    report = anyio.run(lambda: replay_recording(recording, args.strategy, args.kind, params))
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
    from keepers_workshop.relay.server import Relay, make_app

    configure_logging("info", json=not sys.stderr.isatty(), component="relay")
    server = Relay(args.anvil, args.block_time or None)
    web.run_app(make_app(server), host=args.host, port=args.port, print=None, loop=asyncio.new_event_loop())
    return 0

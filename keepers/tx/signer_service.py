"""The signer process: the only process that holds a funds key. It serves `eth_accounts` and
`eth_signTransaction` (JSON-RPC over HTTP, as Web3Signer and Clef do) on a Unix socket only the
keeper can reach, checks what it is asked to sign (its own address, its chain, type-2 fields)
and enforces the hourly spend limit. Strategy code never runs here."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from eth_account import Account

from keepers.config.secrets import SecretError, SecretRef
from keepers.tx.fee_budget import BudgetExceeded, FeeBudget
from keepers.tx.fees import Fees
from keepers.tx.scrub import scrub_environment
from keepers.tx.signer import TxSigner

log = structlog.get_logger("signer")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, REFUSED = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32000,
)
MAX_BATCH = 256
PR_SET_DUMPABLE = 4


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _quantity(tx: dict[str, Any], field: str, required: bool = True) -> int:
    value = tx.get(field)
    if value is None and not required:
        return 0
    if not isinstance(value, str) or not value.startswith("0x") or len(value) > 66:
        raise Refused(INVALID_PARAMS, f"{field} must be a hex quantity")
    try:
        return int(value, 16)
    except ValueError:
        raise Refused(INVALID_PARAMS, f"{field} must be a hex quantity") from None


#: What each keeper kind may call, by contract role: the artifact and its functions. A plugin
#: of that kind asks for the same calls as the built-in strategies; anything else (a claim of
#: the keeper's balances, an approval, a transfer) is refused.
KIND_CALLS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "limit-stop": {"order_book": ("OrderBook", ("executeBatchAtLeast",))},
    "twap": {"order_book": ("OrderBook", ("executeBatchAtLeast",))},
    "iceberg": {"order_book": ("OrderBook", ("executeBatchAtLeast",))},
    "rebalancer": {"vault": ("RebalancingVault", ("rebalance",))},
    "liquidation": {"flash_liquidator": ("FlashLiquidator", ("liquidate",))},
    "oracle": {"oracle": ("PriceOracle", ("updatePrices",))},
}
#: What every kind may call: the builder's payment.
EVERY_KIND_CALLS = {"builder_tip": ("BuilderTip", ("tip",))}


def kind_calls(kind: str, contracts: dict[str, str]) -> frozenset[tuple[str, str]]:
    """(address, selector) pairs a keeper of `kind` may have signed, for these contract
    addresses by role (order_book, vault, ...); the selectors come from the compiled ABIs."""
    from eth_utils.abi import function_signature_to_4byte_selector

    from keepers.chain.artifacts import abi_type, load_artifact

    out = set()
    for role, (artifact, functions) in {**KIND_CALLS.get(kind, {}), **EVERY_KIND_CALLS}.items():
        address = contracts.get(role)
        if not address:
            continue
        for entry in load_artifact(artifact).abi:
            if entry.get("type") == "function" and entry.get("name") in functions:
                types = ",".join(abi_type(i) for i in entry["inputs"])
                selector = function_signature_to_4byte_selector(f"{entry['name']}({types})")
                out.add((address.lower(), "0x" + selector.hex()))
    return frozenset(out)


@dataclass(frozen=True)
class Policy:
    """What the signer signs. A plugin in the keeper can ask for signatures, so this, not the
    key's absence, is what keeps it from sending the keeper's funds elsewhere."""

    chain_ids: frozenset[int]
    #: Where transactions may go, any call (lowercase; its own address always, for no-op gap
    #: fills); None: anywhere (only with --allow-any).
    allowed_to: frozenset[str] | None = frozenset()
    #: (address, selector) pairs allowed besides: the calls of the keeper's kind.
    allowed_calls: frozenset[tuple[str, str]] = frozenset()
    #: Where a transaction may carry value (a builder tip contract); nowhere else.
    value_to: frozenset[str] = frozenset()


class SignerService:
    def __init__(self, signer: TxSigner, policy: Policy, budget: FeeBudget) -> None:
        self.signer = signer
        self.chain_ids = policy.chain_ids
        self.budget = budget
        own = signer.address.lower()
        self.allowed_to = None if policy.allowed_to is None else policy.allowed_to | {own}
        self.allowed_calls = policy.allowed_calls
        self.value_to = policy.value_to

    def handle(self, request: Any) -> dict[str, Any]:
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise Refused(INVALID_REQUEST, "not a JSON-RPC request")
            params = request.get("params", [])
            if not isinstance(params, list):
                raise Refused(INVALID_PARAMS, "params must be a list")
            return {"jsonrpc": "2.0", "id": rid, "result": self._dispatch(request["method"], params)}
        except Refused as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": exc.code, "message": str(exc)}}

    def _dispatch(self, method: str, params: list[Any]) -> Any:
        if method == "eth_accounts":
            return [self.signer.address]
        if method == "eth_signTransaction":
            if len(params) != 1 or not isinstance(params[0], dict):
                raise Refused(INVALID_PARAMS, "eth_signTransaction takes one transaction object")
            return self._sign(params[0])
        raise Refused(METHOD_NOT_FOUND, f"method {method[:64]!r} is not served here")

    def _sign(self, tx: dict[str, Any]) -> str:
        sender = tx.get("from")
        if not isinstance(sender, str) or sender.lower() != self.signer.address.lower():
            raise Refused(INVALID_PARAMS, f"from must be {self.signer.address}")
        chain_id = _quantity(tx, "chainId")
        if chain_id not in self.chain_ids:
            raise Refused(REFUSED, f"chain {chain_id} is not one this signer signs for")
        to = tx.get("to")
        if to is not None and (not isinstance(to, str) or len(to) != 42 or not to.startswith("0x")):
            raise Refused(INVALID_PARAMS, "to must be an address or null")
        data = tx.get("data", "0x")
        if not isinstance(data, str) or not data.startswith("0x"):
            raise Refused(INVALID_PARAMS, "data must be 0x-prefixed hex")
        anywhere = self.allowed_to is None or (to is not None and to.lower() in self.allowed_to)
        if not anywhere and (to is None or (to.lower(), data[:10].lower()) not in self.allowed_calls):
            raise Refused(REFUSED, f"this signer does not sign {data[:10]} on {to}")
        gas, nonce = _quantity(tx, "gas"), _quantity(tx, "nonce")
        value = _quantity(tx, "value", required=False)
        if value and (to is None or to.lower() not in self.value_to):
            raise Refused(
                REFUSED, f"this signer sends value only to {', '.join(sorted(self.value_to)) or 'nobody'}"
            )
        fees = Fees(_quantity(tx, "maxFeePerGas"), _quantity(tx, "maxPriorityFeePerGas"))
        if fees.max_priority_fee_per_gas > fees.max_fee_per_gas:
            raise Refused(INVALID_PARAMS, "maxPriorityFeePerGas above maxFeePerGas")
        try:
            # What a signature can cost: its fees and the value it moves (a builder tip, say).
            self.budget.charge(chain_id, nonce, gas * fees.max_fee_per_gas + value)
        except BudgetExceeded as exc:
            log.warning("signature refused", reason=str(exc), nonce=nonce, chain_id=chain_id)
            raise Refused(REFUSED, str(exc)) from None
        try:
            return "0x" + self.signer.sign_request(tx, fees).raw.hex()
        except (ValueError, TypeError) as exc:  # eth-account's own checks of the fields
            raise Refused(INVALID_PARAMS, f"cannot sign: {exc.__class__.__name__}") from None

    async def http(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "parse error"}}
            )
        if isinstance(body, list):
            if not body or len(body) > MAX_BATCH:
                return web.json_response(
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {
                            "code": INVALID_REQUEST,
                            "message": f"a batch holds 1..{MAX_BATCH} requests",
                        },
                    }
                )
            return web.json_response([self.handle(r) for r in body])
        return web.json_response(self.handle(body))


def make_app(service: SignerService) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/", service.http)
    return app


async def serve(
    key: SecretRef, socket_path: Path, policy: Policy, max_per_hour_wei: int | None, parent: int | None = None
) -> None:
    """Serves until SIGTERM/SIGINT, or, started by a keeper (`parent`), until that keeper is
    gone or stops it with SIGUSR1: a service manager's SIGTERM to the whole group must not stop
    the signer while the keeper still drains. The socket is 0660: the keeper's user (or, in the
    chart's pod, its group) may ask for signatures; nobody else on the machine can."""
    if parent is not None and os.getppid() != parent:
        return  # the keeper died while this process started
    signer = TxSigner(Account.from_key(key.resolve()), chain_id=0)
    for variable in key.variables:
        scrub_environment(variable)  # /proc/<pid>/environ of this process too
    service = SignerService(signer, policy, FeeBudget(max_per_hour_wei))
    runner = web.AppRunner(make_app(service), access_log=None)
    await runner.setup()
    socket_path.unlink(missing_ok=True)
    old = os.umask(0o117)
    try:
        await web.UnixSite(runner, str(socket_path)).start()
    finally:
        os.umask(old)
    log.info(
        "signer serving", address=signer.address, socket=str(socket_path), chains=sorted(policy.chain_ids)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGUSR1,) if parent is not None else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if parent is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: None)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            if parent is not None and os.getppid() != parent:
                log.warning("the keeper that started this signer is gone; stopping")
                break
    await runner.cleanup()
    socket_path.unlink(missing_ok=True)
    if parent is not None:  # the private directory a keeper made for it, unless it was killed
        with contextlib.suppress(OSError):
            socket_path.parent.rmdir()


def not_dumpable() -> None:
    """Linux: other processes of the same user (the keeper, a plugin in it) can then neither
    read this process's memory or environment in /proc nor attach a debugger to it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def main(argv: list[str] | None = None) -> int:
    """`python -m keepers.tx.signer_service`: what `keepers signer serve` runs, with no more
    imports than signing needs (the keeper starts one per process)."""
    import argparse

    parser = argparse.ArgumentParser(prog="keepers signer serve", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-env", metavar="VAR", help="the key is in this environment variable")
    source.add_argument(
        "--key-file", type=Path, metavar="PATH", help="the key is in this file (not world-readable)"
    )
    source.add_argument(
        "--keystore", type=Path, metavar="PATH", help="an encrypted keystore (with a password)"
    )
    password = parser.add_mutually_exclusive_group()
    password.add_argument("--password-file", type=Path, metavar="PATH")
    password.add_argument("--password-env", metavar="VAR")
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve on")
    parser.add_argument(
        "--chain-id", type=int, action="append", required=True, help="a chain it signs for (repeat)"
    )
    parser.add_argument(
        "--max-fees-per-hour-eth", type=float, metavar="ETH",
        help="refuse signatures whose fees and value would pass this in any hour (default: no limit)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-to", action="append", default=[], metavar="ADDRESS",
        help="sign transactions to this address (repeat; its own is always allowed)",
    )  # fmt: skip
    parser.add_argument("--allow-any", action="store_true", help="sign transactions to any address")
    parser.add_argument(
        "--kind", help="the keeper kind it signs for: the calls of that kind on the --contract addresses"
    )
    parser.add_argument(
        "--contract", action="append", default=[], metavar="ROLE=ADDRESS",
        help="a contract by role (order_book, vault, flash_liquidator, oracle, builder_tip; repeat)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-value-to", action="append", default=[], metavar="ADDRESS",
        help="a transaction may carry value to this address (repeat; a builder tip contract)",
    )  # fmt: skip
    parser.add_argument(
        "--parent-pid", type=int, metavar="PID",
        help="started by this keeper: stop when it is gone (or on SIGUSR1), not on SIGTERM",
    )  # fmt: skip
    args = parser.parse_args(argv)
    not_dumpable()
    try:
        key = SecretRef(
            env=args.key_env, file=args.key_file, keystore=args.keystore,
            password_file=args.password_file, password_env=args.password_env,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc).splitlines()[-1])
    limit = None if args.max_fees_per_hour_eth is None else int(args.max_fees_per_hour_eth * 10**18)
    try:
        contracts = dict(c.split("=", 1) for c in args.contract)
    except ValueError:
        parser.error("--contract takes ROLE=ADDRESS")
    if args.kind and args.kind not in KIND_CALLS:
        parser.error(f"--kind: one of {', '.join(KIND_CALLS)}")
    policy = Policy(
        chain_ids=frozenset(args.chain_id),
        allowed_to=None if args.allow_any else frozenset(a.lower() for a in args.allow_to),
        allowed_calls=kind_calls(args.kind, contracts) if args.kind else frozenset(),
        value_to=frozenset(a.lower() for a in args.allow_value_to),
    )
    try:
        asyncio.run(serve(key, args.socket, policy, limit, args.parent_pid))
    except SecretError as exc:
        print(f"keepers signer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test harness for strategy authors: a running anvil with the platform deployed, funded traders,
blocks stepped by the test through the local relay, helpers to move prices, and a harness that
runs a real keeper loop (follower, store, nonce manager, bundle submission) in the background.

Served by the `keepers_devnet` fixture of the pytest plugin (`keepers_workshop.testing.plugin`)
wherever keepers-workshop is installed; a plugin's tests name its type from the SDK:

    from keepers.sdk.testing import Devnet

    def test_my_strategy(keepers_devnet: Devnet) -> None:
        d = keepers_devnet
        # 1 WETH for at least 1,900 USDC (the market is near 2,000): executable now.
        oid = d.place("WETH/USDC", "limit", 10**18, 1_900 * 10**6, fee_bps=30)
        with d.keeper("limit-stop", "my-strategy", {"min_fee_bps": 5}) as k:
            target = k.wait_for_bundle(d.head + 1)     # a bundle for the next block
            d.mine()                                   # the relay builds it
        assert [int(f["blockNumber"]) for f in d.fills(oid)] == [target]  # filled there

To unit-test a strategy's decisions without a chain (milliseconds), see `keepers.sdk.testing`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import Engine
from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD
from web3.types import TxReceipt

from keepers.config.schema import Settings
from keepers.engine.loop import KeeperLoop
from keepers.engine.plugins import strategy_class
from keepers.obs.health import bound_port, make_health_app, serve
from keepers.obs.order_api import make_order_api, onchain_markets
from keepers.runtime import build_keeper
from keepers_workshop.devnet.anvil import Anvil, anvil_key, free_port
from keepers_workshop.devnet.deploy import Deployment, bind, deploy_platform
from keepers_workshop.devnet.market import arbitrage_input
from keepers_workshop.relay.server import RelayThread

ORDER_KINDS = {"limit": 0, "stop-loss": 1, "take-profit": 2, "twap": 3, "iceberg": 4}
KEEPER_KEY_INDEX = 9
TRADER_KEY_INDEXES = (1, 2, 3, 5, 6)


@dataclass
class KeeperHarness:
    """A keeper loop running on its own thread and event loop."""

    loop: KeeperLoop
    relay_url: str
    engine: Engine | None = None
    #: The keeper's order API (/orders, /openapi.json), served as `keepers run` serves it.
    api_url: str = ""
    #: The keeper's /healthz, /readyz and /metrics.
    health_url: str = ""
    _thread: threading.Thread | None = None
    _stop: threading.Event | None = None
    error: BaseException | None = None

    def pending_bundle_blocks(self) -> list[int]:
        resp = requests.post(
            self.relay_url, json={"jsonrpc": "2.0", "id": 1, "method": "relay_pendingBundles"}, timeout=10
        )
        return sorted({int(b["blockNumber"], 16) for b in resp.json()["result"]})

    def wait_for_bundles(self, block: int, count: int, timeout: float = 15.0) -> None:
        """Waits until `count` bundles (from any keepers) are pending for `block`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise self.error
            resp = requests.post(
                self.relay_url, json={"jsonrpc": "2.0", "id": 1, "method": "relay_pendingBundles"}, timeout=10
            )
            if sum(int(b["blockNumber"], 16) == block for b in resp.json()["result"]) >= count:
                return
            time.sleep(0.02)
        raise TimeoutError(f"fewer than {count} bundles pending for block {block} within {timeout}s")

    def wait_for_bundle(self, block: int | None = None, timeout: float = 15.0) -> int:
        """Waits until a bundle is pending (for `block` if given); returns its target block."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise self.error
            blocks = self.pending_bundle_blocks()
            if blocks and (block is None or block in blocks):
                return block if block is not None else blocks[0]
            time.sleep(0.02)
        raise TimeoutError(f"no bundle pending{f' for block {block}' if block else ''} within {timeout}s")

    def wait_synced(self, block: int, timeout: float = 15.0) -> None:
        """Waits until the keeper has handled `block` (its strategy has run for it)."""
        deadline = time.monotonic() + timeout
        while self.loop.state.last_block < block or self.loop._maintaining:
            if self.error:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"keeper did not reach block {block}")
            time.sleep(0.02)

    def wait_idle(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.loop.state.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)


def keeper_settings(
    keys_dir: Path,
    relay_url: str,
    dep: Deployment,
    kind: str,
    strategy: str,
    params: dict[str, Any],
    *,
    key: str,
    database_url: str,
    poll_interval: float = 0.02,
    flashbots: dict[str, Any] | None = None,
    confirmations: int = 0,
) -> Settings:
    """Settings for one keeper on a devnet behind the local relay (keys in files under
    `keys_dir`, as an operator would reference them); `flashbots` overrides keys of its
    [flashbots] table (relays behind a fault proxy, a fallback route); `confirmations` is the
    depth at which the keeper's transactions are final (0: at inclusion, as on the devnet)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    signer, reputation = keys_dir / "signer.key", keys_dir / "reputation.key"
    for path, value in ((signer, key), (reputation, Account.create().key.to_0x_hex())):
        path.write_text(value)
        path.chmod(0o600)
    return Settings.model_validate(
        {
            "database_url": database_url,
            "signer": {"file": str(signer)},
            "drain_timeout": 10.0,
            "chains": {
                "devnet": {
                    "chain_id": 31337,
                    "rpc": [{"url": relay_url, "rate_limit": 10_000}],
                    "block_time": 1.0,
                    "poll_interval": poll_interval,
                    "submission": "flashbots",
                    "flashbots": {
                        "relays": [relay_url],
                        "reputation_key": {"file": str(reputation)},
                        **(flashbots or {}),
                    },
                    "confirmations": confirmations,
                    "contracts": {
                        "order_book": dep.order_book,
                        "oracle": dep.oracle,
                        "lending_market": dep.lending_market,
                        "vault": dep.vault,
                        "flash_liquidator": dep.flash_liquidator,
                        "builder_tip": dep.builder_tip or None,
                        "pools": [p["address"] for p in dep.pools],
                    },
                }
            },
            "keepers": {
                kind: {"chain": "devnet", "strategy": strategy, "params": params, "strategy_timeout": 5.0}
            },
        }
    )


class Devnet:
    """A deployed platform on anvil behind the relay, with blocks stepped by the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.anvil = Anvil(extra_args=("--order", "fifo"))
        self.relay: RelayThread | None = None
        self.keeper_account: LocalAccount = Account.from_key(anvil_key(KEEPER_KEY_INDEX))
        self.traders: list[LocalAccount] = [Account.from_key(anvil_key(i)) for i in TRADER_KEY_INDEXES]
        self.deployer: LocalAccount = Account.from_key(anvil_key(0))
        self._nonces: dict[str, int] = {}

    def start(self) -> Devnet:
        self.anvil.start()
        w3 = Web3(Web3.HTTPProvider(self.anvil.url))
        self.deployment: Deployment = deploy_platform(
            w3, anvil_key(0), updaters=(self.keeper_account.address,)
        )
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        self.relay = RelayThread(self.anvil.url, free_port(), block_time=None).start()
        self.w3 = Web3(Web3.HTTPProvider(self.relay.url))
        self.book = bind(self.w3, "OrderBook", self.deployment.order_book)
        self.oracle = bind(self.w3, "PriceOracle", self.deployment.oracle)
        for trader in self.traders:
            for symbol in self.deployment.tokens:
                token = self.token(symbol)
                self.send(trader, token, "mint", trader.address, 10**30, mine=False)
                self.send(trader, token, "approve", self.book.address, 2**256 - 1, mine=False)
        self.mine()
        return self

    def stop(self) -> None:
        if self.relay:
            self.relay.stop()
        self.anvil.stop()

    # ----------------------------------------------------------------- chain

    @property
    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def mine(self, blocks: int = 1) -> int:
        """Builds `blocks` blocks through the relay (the best bundles at the top, then the public txs)."""
        assert self.relay is not None
        for _ in range(blocks):
            requests.post(
                self.relay.url, json={"jsonrpc": "2.0", "id": 1, "method": "relay_buildBlock"}, timeout=60
            )
        return self.head

    def advance_time(self, seconds: int) -> None:
        """The next block comes `seconds` later than it otherwise would."""
        assert self.relay is not None
        requests.post(
            self.relay.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "relay_advanceTime", "params": [seconds]},
            timeout=10,
        )

    def token(self, symbol: str) -> Contract:
        return bind(self.w3, "DevnetToken", self.deployment.tokens[symbol])

    def send(
        self, acct: LocalAccount, contract: Contract, fn: str, *args: Any, mine: bool = True
    ) -> TxReceipt | None:
        """Signs and sends a public transaction; with mine=True builds the block and returns the receipt."""
        # The relay holds public txs until it builds a block, so the node's pending count lags:
        # count locally, never below the chain.
        nonce = max(self._nonces.get(acct.address, 0), self.w3.eth.get_transaction_count(acct.address))
        self._nonces[acct.address] = nonce + 1
        tx = getattr(contract.functions, fn)(*args).build_transaction(
            {
                "from": acct.address,
                "nonce": nonce,
                "gas": 1_500_000,
                "maxFeePerGas": 200 * 10**9,
                "maxPriorityFeePerGas": 10**9,
                "chainId": 31337,
            }
        )
        tx_hash = self.w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
        if not mine:
            return None
        self.mine()
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise RuntimeError(f"{fn} reverted in block {receipt['blockNumber']}")
        return receipt

    # ---------------------------------------------------------------- orders

    def place(
        self,
        market: str,
        kind: str,
        amount_in: int,
        min_out: int,
        *,
        trader: int = 0,
        fee_bps: int = 10,
        trigger: int = 0,
        clip: int = 0,
        start: int = 0,
        interval: int = 0,
        slices: int = 0,
        expiry: int = 0,
        tolerance_bps: int = 0,
    ) -> int:
        params = (
            self.deployment.markets[market], ORDER_KINDS[kind], amount_in, min_out, expiry, fee_bps,
            trigger or clip, start, interval, slices, tolerance_bps,
        )  # fmt: skip
        receipt = self.send(self.traders[trader], self.book, "placeOrder", params)
        assert receipt is not None
        return int(self.book.events.OrderPlaced().process_receipt(receipt, errors=DISCARD)[0]["args"]["id"])

    def order(self, order_id: int) -> Any:
        return self.book.functions.getOrder(order_id).call()

    def fills(self, order_id: int, from_block: int = 0) -> list[Any]:
        return list(
            self.book.events.OrderFilled().get_logs(from_block=from_block, argument_filters={"id": order_id})
        )

    # ---------------------------------------------------------------- prices

    def pools(self, base: str, quote: str) -> list[str]:
        return [p["address"] for p in self.deployment.pools if (p["base"], p["quote"]) == (base, quote)]

    def swap(self, pool: str, token_in: str, amount: int, *, trader: int = 4, mine: bool = True) -> None:
        """A trader's exact-input swap (moves the pool's price), in its own block (or, with
        `mine=False`, in the next block built)."""
        acct = self.traders[trader]
        p = bind(self.w3, "LiquidityPool", pool)
        token = self.token(token_in)
        out, token_out = p.functions.getAmountOut(amount, token.address).call()
        self.send(acct, token, "transfer", p.address, amount, mine=False)
        zero_for_one = int(token_out, 16) < int(token.address, 16)
        self.send(
            acct,
            p,
            "swap",
            out if zero_for_one else 0,
            0 if zero_for_one else out,
            acct.address,
            b"",
            mine=mine,
        )

    def move_market(self, symbol: str, usd: float) -> None:
        """The market moves: every pool of `symbol` is arbitraged to `usd` (against its other
        token's oracle price) and the oracle follows, as on a live chain. Fills are bounded by
        the oracle's rate (each market's tolerance), so moving the oracle alone leaves the
        pools far from it and nothing fair to fill."""
        oracle_usd = {
            s: self.oracle.functions.latestRound(a).call()[1] / 10**18
            for s, a in self.deployment.tokens.items()
        }
        oracle_usd[symbol] = usd
        for p in self.deployment.pools:
            if symbol not in (p["base"], p["quote"]):
                continue
            pool = bind(self.w3, "LiquidityPool", p["address"])
            t0 = str(pool.functions.token0().call()).lower()
            s0, s1 = (
                (p["base"], p["quote"])
                if self.token(p["base"]).address.lower() == t0
                else (p["quote"], p["base"])
            )
            d0, d1 = self.deployment.decimals[s0], self.deployment.decimals[s1]
            r0, r1, _ = pool.functions.getReserves().call()
            target = oracle_usd[s0] / oracle_usd[s1] * 10 ** (d1 - d0)
            swap = arbitrage_input(r0, r1, target, int(pool.functions.currentFee().call()))
            if swap is not None:
                zero_in, amount = swap
                token_in = s0 if zero_in else s1
                self.send(self.deployer, self.token(token_in), "mint", self.traders[4].address, amount)
                self.swap(p["address"], token_in, amount)
        self.set_price(symbol, usd)

    def set_price(self, symbol: str, usd: float) -> None:
        """Moves the oracle to `usd` in steps within its per-update bound, one block each."""
        asset = self.deployment.tokens[symbol]
        target = int(usd * 10**18)
        _dev, max_change, _hb = self.oracle.functions.assetConfig(asset).call()
        while True:
            _r, current, _at = self.oracle.functions.latestRound(asset).call()
            if current == target:
                return
            step = current * (max_change - 1) // 10_000
            nxt = max(min(target, current + step), current - step)
            self.send(self.deployer, self.oracle, "updatePrice", asset, nxt)

    # --------------------------------------------------------------- keepers

    @contextmanager
    def keeper(
        self, kind: str, strategy: str, params: dict[str, Any] | None = None, *, key: str | None = None,
        db: str | None = None, flashbots: dict[str, Any] | None = None, confirmations: int = 0,
    ) -> Iterator[KeeperHarness]:  # fmt: skip
        """Runs a keeper for `kind` with a strategy plugin until the block exits: built from
        settings by the runtime's own factory, as `keepers run` builds it."""
        assert self.relay is not None
        params = dict(params or {})
        if "native_token" in strategy_class(strategy).Params.model_fields:
            params.setdefault("native_token", self.deployment.tokens["WETH"].lower())
        stamp = time.monotonic_ns()
        settings = keeper_settings(
            self.workdir / f"keeper-{kind}-{stamp}",
            self.relay.url,
            self.deployment,
            kind,
            strategy,
            params,
            key=key or anvil_key(KEEPER_KEY_INDEX),
            database_url=db or f"sqlite:///{self.workdir / f'keeper-{kind}-{stamp}.sqlite'}",
            flashbots=flashbots,
            confirmations=confirmations,
        )
        harness_holder: dict[str, KeeperHarness] = {}
        started = threading.Event()
        stop = threading.Event()
        relay_url = self.relay.url

        async def stopped() -> None:
            while not stop.is_set():
                await anyio.sleep(0.02)

        async def main() -> None:
            async with AsyncExitStack() as stack:
                built = await build_keeper(settings, kind, stack)
                loop = built.loop

                async def ready() -> tuple[bool, str]:
                    return loop.state.last_block >= 0, f"last block {loop.state.last_block}"

                health = await serve(make_health_app(ready), 0, host="127.0.0.1")
                stack.push_async_callback(health.cleanup)
                markets = onchain_markets(built.w3, loop.contracts.get("order_book"))
                api_app = make_order_api(built.engine, loop.chain_id, settings.order_api, markets)
                api = await serve(api_app, 0, host="127.0.0.1")
                stack.push_async_callback(api.cleanup)
                harness_holder["h"] = KeeperHarness(
                    loop,
                    relay_url,
                    built.engine,
                    f"http://127.0.0.1:{bound_port(api)}",
                    f"http://127.0.0.1:{bound_port(health)}",
                )
                started.set()
                await built.run(stopped)

        def run() -> None:
            try:
                anyio.run(main)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the test through the harness
                if "h" in harness_holder:
                    harness_holder["h"].error = exc
                started.set()

        thread = threading.Thread(target=run, daemon=True, name=f"keeper-{kind}")
        thread.start()
        started.wait(30)
        harness = harness_holder["h"]
        harness.wait_synced(self.head)
        try:
            yield harness
        finally:
            stop.set()
            thread.join(30)

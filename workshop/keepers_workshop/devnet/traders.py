"""Simulated traders: a realistic mix of orders around the market (limit, stop-loss,
take-profit, TWAP, iceberg), some cancelled, lending positions opened close to their limit,
and rebalancing baskets. Everything goes through the public mempool, as users' wallets do."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import structlog
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from keepers_workshop.devnet.deploy import Deployment, bind
from keepers_workshop.devnet.public import PublicSender

log = structlog.get_logger("traders")

KINDS = {"limit": 0, "stop-loss": 1, "take-profit": 2, "twap": 3, "iceberg": 4}
#: How often each kind is placed (weights).
MIX = {"limit": 45, "stop-loss": 15, "take-profit": 15, "twap": 10, "iceberg": 15}
#: Markets traders use, with the size range of one order in whole input tokens.
MARKETS = {
    "WETH/USDC": (0.2, 3.0),
    "USDC/WETH": (400.0, 6_000.0),
    "WBTC/USDC": (0.01, 0.1),
    "WETH/DAI": (0.2, 2.0),
}


@dataclass
class TraderStats:
    placed: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    positions: int = 0
    baskets: int = 0


class TraderSim:
    def __init__(
        self, w3: Web3, dep: Deployment, sender: PublicSender, traders: list[LocalAccount], seed: int
    ) -> None:
        self.w3 = w3
        self.dep = dep
        self.sender = sender
        self.traders = traders
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not secrecy
        self.book = bind(w3, "OrderBook", dep.order_book)
        self.oracle = bind(w3, "PriceOracle", dep.oracle)
        self.lending = bind(w3, "LendingMarket", dep.lending_market)
        self.vault = bind(w3, "RebalancingVault", dep.vault)
        self.tokens = {s: bind(w3, "DevnetToken", a) for s, a in dep.tokens.items()}
        self.pools = {
            m: [
                bind(w3, "LiquidityPool", p["address"])
                for p in dep.pools
                if f"{p['base']}/{p['quote']}" in (m, _flip(m))
            ]
            for m in MARKETS
        }
        self.stats = TraderStats()
        self.open: dict[int, LocalAccount] = {}  # order id -> owner (kept by the monitor's events)
        self._baskets_sent = 0

    def fund(self) -> None:
        spenders = (self.book.address, self.lending.address, self.vault.address)
        for t in self.traders:
            for token in self.tokens.values():
                self.sender.send(t, token, "mint", t.address, 10**36, gas=100_000)
                for spender in spenders:
                    self.sender.send(t, token, "approve", spender, 2**256 - 1, gas=100_000)

    # ------------------------------------------------------------------ prices

    def _usd(self, symbol: str) -> float:
        if symbol in ("USDC", "DAI"):
            return 1.0
        _r, price, _at = self.oracle.functions.latestRound(self.dep.tokens[symbol]).call()
        return float(price) / 1e18

    def _pool_rate(self, market: str, amount_raw: int) -> int:
        """What the best pool pays now for `amount_raw` of the input (raw output)."""
        token_in = self.tokens[market.split("/")[0]].address
        return max(int(p.functions.getAmountOut(amount_raw, token_in).call()[0]) for p in self.pools[market])

    # ------------------------------------------------------------------ orders

    def place_orders(self, n: int) -> None:
        for _ in range(n):
            kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
            market = self.rng.choice(list(MARKETS))
            try:
                self._place(kind, market)
            except Exception as exc:  # noqa: BLE001 - a read failing mid-block skips one order, not the run
                log.warning("order not placed", kind=kind, market=market, error=repr(exc))

    def _place(self, kind: str, market: str) -> None:
        base, quote = market.split("/")
        lo, hi = MARKETS[market]
        size = self.rng.uniform(lo, hi)
        amount = int(size * 10 ** self.dep.decimals[base])
        fair_out = self._pool_rate(market, amount)
        oracle_rate = int(self._usd(base) / self._usd(quote) * 1e18)  # quote per base, whole tokens
        trader = self.rng.choice(self.traders)
        # Fees that pay for a fill's gas at the devnet's prices (a trader offering less waits,
        # as on a real chain: keepers never fill at a loss).
        fee_bps = self.rng.choice((10, 20, 30, 50))
        trigger = start = interval = slices = 0
        if kind == "limit":
            # Some at the market (fill now), most a little above it (fill when the price moves).
            edge = self.rng.choice((-0.01, 0.002, 0.005, 0.01, 0.02))
            min_out = int(fair_out * (1 + edge))
        elif kind in ("stop-loss", "take-profit"):
            move = self.rng.uniform(0.005, 0.03)
            trigger = int(oracle_rate * ((1 - move) if kind == "stop-loss" else (1 + move)))
            min_out = int(fair_out * (1 - move) * 0.97)  # the order's slippage bound once armed
        elif kind == "twap":
            slices = self.rng.randint(3, 5)
            amount *= slices
            fair_out = self._pool_rate(market, amount // slices) * slices
            interval = self.rng.randint(3, 8)
            start = int(self.w3.eth.get_block("latest")["timestamp"]) + 1
            min_out = int(fair_out * 0.95)
        else:  # iceberg: 3 to 5 clips of equal size (a UI would not leave a few wei for a last clip)
            clips = self.rng.randint(3, 5)
            trigger = amount  # the clip size
            amount *= clips
            min_out = int(self._pool_rate(market, amount // 4) * 4 * 0.99)
        market_id = self.dep.markets[market]
        params = (
            market_id,
            KINDS[kind],
            amount,
            max(min_out, 1),
            0,
            fee_bps,
            trigger,
            start,
            interval,
            slices,
            0,  # the market's fairness tolerance
        )
        self.sender.send(trader, self.book, "placeOrder", params, gas=400_000)
        self.stats.placed[kind] += 1

    def cancel_some(self, open_orders: dict[int, str], share: float = 0.05) -> None:
        by_address = {t.address.lower(): t for t in self.traders}
        for oid, owner in list(open_orders.items()):
            if self.rng.random() < share and owner in by_address:
                self.sender.send(by_address[owner], self.book, "cancelOrder", oid, gas=150_000)
                self.stats.cancelled += 1

    # ------------------------------------------------------------- positions

    def open_position(self) -> None:
        """Collateral in WETH, USDC borrowed close to the limit: a few percent down and it is
        liquidatable."""
        trader = self.rng.choice(self.traders)
        collateral = self.rng.uniform(2, 8)
        factor = int(self.lending.functions.collateralFactorBps().call())
        borrow_usd = collateral * self._usd("WETH") * factor / 10_000 * self.rng.uniform(0.97, 0.995)
        self.sender.send(trader, self.lending, "depositCollateral", int(collateral * 1e18), gas=300_000)
        self.sender.send(trader, self.lending, "borrow", int(borrow_usd * 1e6), gas=400_000)
        self.stats.positions += 1

    def open_basket(self) -> None:
        trader = self.rng.choice(self.traders)
        weth, usdc = self.tokens["WETH"], self.tokens["USDC"]
        next_id = int(self.vault.functions.basketCount().call()) + 1
        threshold = self.rng.choice((50, 75, 100))  # bps of drift; a few percent of price move
        self.sender.send(trader, self.vault, "createBasket", [weth.address, usdc.address], [5_000, 5_000],
                         threshold, 300, 10, gas=400_000)  # fmt: skip
        value_usd = self.rng.uniform(10_000, 40_000)
        self.sender.send(trader, self.vault, "deposit", next_id, weth.address,
                         int(value_usd / 2 / self._usd("WETH") * 1e18), gas=200_000)  # fmt: skip
        self.sender.send(trader, self.vault, "deposit", next_id, usdc.address, int(value_usd / 2 * 1e6),
                         gas=200_000)  # fmt: skip
        self.stats.baskets += 1


def _flip(market: str) -> str:
    a, b = market.split("/")
    return f"{b}/{a}"


def token_contract(w3: Web3, address: str) -> Contract:
    return bind(w3, "DevnetToken", address)

"""The devnet's market: a price process per volatile asset (a random walk with occasional
jumps) and an arbitrageur that swaps every pool of the asset toward it, so pools move
together, the oracle keeper's median follows, and triggers, liquidations and rebalances happen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from keepers_workshop.devnet.deploy import Deployment, bind
from keepers_workshop.devnet.public import PublicSender

#: Assets whose USD price walks; the others are stable.
VOLATILE = {"WETH": 0.0025, "WBTC": 0.002}  # per-step standard deviation of the log price
JUMP_PROBABILITY = 0.03
JUMP_SIZE = (0.02, 0.05)
#: Largest single arbitrage swap, as a share of the pool's reserve (keeps moves realistic).
MAX_SWAP_SHARE = 0.08


@dataclass
class PricePath:
    symbol: str
    usd: float
    sigma: float

    def step(self, rng: random.Random) -> float:
        move = rng.gauss(0.0, self.sigma)
        if rng.random() < JUMP_PROBABILITY:
            move += rng.choice((-1, 1)) * rng.uniform(*JUMP_SIZE)
        self.usd *= math.exp(move)
        return self.usd


def arbitrage_input(
    r0: int, r1: int, target: float, fee_pips: int, max_share: float = 1.0
) -> tuple[bool, int] | None:
    """The swap that brings a constant-product pool with reserves (r0, r1) to `target` (raw
    token1 per raw token0): (token0 in?, amount in), at most `max_share` of the input reserve;
    None when the pool is within a basis point or so of it already."""
    k = r0 * r1
    new0 = math.isqrt(int(k / target)) if target > 0 else r0
    fee = 1 - fee_pips / 1e6
    if new0 < r0:  # token0 is cheap here: buy it with token1
        zero_in, reserve_in, amount = False, r1, int((k / new0 - r1) / fee)
    else:
        zero_in, reserve_in, amount = True, r0, int((new0 - r0) / fee)
    amount = min(amount, int(reserve_in * max_share))
    if amount <= reserve_in // 100_000:
        return None
    return zero_in, amount


class MarketDriver:
    def __init__(
        self, w3: Web3, dep: Deployment, sender: PublicSender, arbitrageur: LocalAccount, seed: int
    ) -> None:
        self.w3 = w3
        self.dep = dep
        self.sender = sender
        self.arb = arbitrageur
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not secrecy
        self.paths = {s: PricePath(s, self._oracle_usd(s), sigma) for s, sigma in VOLATILE.items()}
        self.tokens = {s: bind(w3, "DevnetToken", a) for s, a in dep.tokens.items()}
        self.symbol_of = {a.lower(): s for s, a in dep.tokens.items()}
        self.pools: list[Contract] = [bind(w3, "LiquidityPool", p["address"]) for p in dep.pools]
        # A pool's tokens never change: read once, not every step (the simulated world shares
        # the cores with the keepers it tests).
        self.pair_of = {
            pool.address: (str(pool.functions.token0().call()), str(pool.functions.token1().call()))
            for pool in self.pools
        }
        self.swaps = 0

    def _oracle_usd(self, symbol: str) -> float:
        oracle = bind(self.w3, "PriceOracle", self.dep.oracle)
        _round, price, _at = oracle.functions.latestRound(self.dep.tokens[symbol]).call()
        return float(price) / 1e18

    def fund(self) -> None:
        for token in self.tokens.values():
            self.sender.send(self.arb, token, "mint", self.arb.address, 10**40)

    def step(self) -> dict[str, float]:
        """Moves every volatile asset one step and arbitrages its pools to the new price."""
        targets = {s: p.step(self.rng) for s, p in self.paths.items()}
        usd = {s: targets.get(s, 1.0) for s in self.tokens}
        for pool in self.pools:
            self._arbitrage(pool, usd)
        return targets

    def _arbitrage(self, pool: Contract, usd: dict[str, float]) -> None:
        t0, t1 = self.pair_of[pool.address]
        s0, s1 = self.symbol_of[t0.lower()], self.symbol_of[t1.lower()]
        if s0 not in VOLATILE and s1 not in VOLATILE:
            return
        r0, r1, _ = pool.functions.getReserves().call()
        d0, d1 = self.dep.decimals[s0], self.dep.decimals[s1]
        # Target raw price: token1 raw per token0 raw.
        target = usd[s0] / usd[s1] * 10 ** (d1 - d0)
        swap = arbitrage_input(r0, r1, target, int(pool.functions.currentFee().call()), MAX_SWAP_SHARE)
        if swap is None:
            return
        zero_for_one, amount = swap
        token_in = t0 if zero_for_one else t1
        out, _ = pool.functions.getAmountOut(amount, Web3.to_checksum_address(token_in)).call()
        token = self.tokens[self.symbol_of[token_in.lower()]]
        self.sender.send(self.arb, token, "transfer", pool.address, amount, gas=100_000)
        outs = (0, out) if zero_for_one else (out, 0)
        self.sender.send(self.arb, pool, "swap", *outs, self.arb.address, b"", gas=250_000)
        self.swaps += 1

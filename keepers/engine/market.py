"""One block's view of the venues and the oracle, read once and shared by the candidate source
and the strategy: pool reserves and fees, oracle prices, and exact off-chain quotes (the pool's
own math, `keepers.chain.pool_math`) over direct and two-hop routes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import permutations
from typing import Any

from web3 import AsyncWeb3
from web3.contract import AsyncContract

from keepers.chain.artifacts import load_artifact
from keepers.chain.calls import RawCall, call_all
from keepers.chain.pool_math import amount_out


@dataclass(frozen=True)
class PoolState:
    address: str
    token0: str
    token1: str
    reserve0: int
    reserve1: int
    fee_pips: int

    def has(self, token: str) -> bool:
        return token in (self.token0, self.token1)

    def other(self, token: str) -> str:
        return self.token1 if token == self.token0 else self.token0

    def quote(self, token_in: str, amount: int) -> int:
        r_in, r_out = (
            (self.reserve0, self.reserve1) if token_in == self.token0 else (self.reserve1, self.reserve0)
        )
        if r_in == 0 or r_out == 0 or amount <= 0:
            return 0
        return amount_out(amount, r_in, r_out, self.fee_pips)


@dataclass(frozen=True)
class Route:
    path: tuple[str, ...]  # pool addresses
    amount_in: int
    amount_out: int


@dataclass
class MarketSnapshot:
    block: int
    pools: list[PoolState] = field(default_factory=list)
    #: token (lowercase) -> (USD per whole token, 18 decimals; fresh)
    prices: dict[str, tuple[int, bool]] = field(default_factory=dict)
    decimals: dict[str, int] = field(default_factory=dict)
    #: market id -> (tokenIn, tokenOut), lowercase
    markets: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: market id -> the market's fairness tolerance (bps below the oracle's rate)
    tolerance: dict[int, int] = field(default_factory=dict)

    def routes(self, token_in: str, token_out: str) -> list[tuple[PoolState, ...]]:
        """Every direct and two-hop path from token_in to token_out."""
        direct: list[tuple[PoolState, ...]] = [
            (p,) for p in self.pools if p.has(token_in) and p.has(token_out)
        ]
        two_hop: list[tuple[PoolState, ...]] = [
            (a, b)
            for a, b in permutations(self.pools, 2)
            if a.has(token_in)
            and a.other(token_in) != token_out
            and b.has(a.other(token_in))
            and b.has(token_out)
        ]
        return direct + two_hop

    def quote_path(self, path: tuple[PoolState, ...], token_in: str, amount: int) -> int:
        token = token_in
        for pool in path:
            amount = pool.quote(token, amount)
            token = pool.other(token)
        return amount

    def best_route(self, token_in: str, token_out: str, amount: int) -> Route | None:
        """The route that pays the most for `amount`, quoted exactly as the pools would."""
        best: Route | None = None
        for path in self.routes(token_in, token_out):
            out = self.quote_path(path, token_in, amount)
            if out > 0 and (best is None or out > best.amount_out):
                best = Route(tuple(p.address for p in path), amount, out)
        return best

    def after_swap(self, path: tuple[str, ...], token_in: str, amount: int) -> MarketSnapshot:
        """This snapshot with `amount` of `token_in` swapped along `path` (pool addresses): what
        a later swap in the same transaction sees. Fees are kept as they are (the pools' dynamic
        fee may rise within the block; the contract re-quotes, so that only costs fills)."""
        pools = {p.address: p for p in self.pools}
        token = token_in
        for address in path:
            pool = pools[address]
            out = pool.quote(token, amount)
            if token == pool.token0:
                pools[address] = replace(pool, reserve0=pool.reserve0 + amount, reserve1=pool.reserve1 - out)
            else:
                pools[address] = replace(pool, reserve1=pool.reserve1 + amount, reserve0=pool.reserve0 - out)
            token, amount = pool.other(token), out
        return replace(self, pools=[pools[p.address] for p in self.pools])

    def oracle_rate(self, token_in: str, token_out: str) -> int | None:
        """tokenOut per tokenIn in whole tokens, 1e18 (the contract's stop trigger unit)."""
        p_in, fresh_in = self.prices.get(token_in, (0, False))
        p_out, fresh_out = self.prices.get(token_out, (0, False))
        if not (fresh_in and fresh_out and p_out):
            return None
        return p_in * 10**18 // p_out

    def fair_out(self, token_in: str, token_out: str, amount: int) -> int | None:
        """What `amount` of token_in is worth in token_out at the oracle (raw units), exactly as
        the OrderBook computes it; None when either price is missing or stale."""
        p_in, fresh_in = self.prices.get(token_in, (0, False))
        p_out, fresh_out = self.prices.get(token_out, (0, False))
        if not (fresh_in and fresh_out and p_in and p_out):
            return None
        d_in, d_out = self.decimals.get(token_in, 18), self.decimals.get(token_out, 18)
        return int(amount * (p_in * 10**d_out) // (p_out * 10**d_in))

    def value_usd(self, token: str, amount: int) -> int:
        """USD value with 18 decimals (0 if the oracle has no fresh price)."""
        price, fresh = self.prices.get(token, (0, False))
        if not fresh:
            return 0
        return int(amount * price // 10 ** self.decimals.get(token, 18))


class SnapshotReader:
    """Reads a MarketSnapshot per block; token metadata and markets are cached."""

    def __init__(
        self, w3: AsyncWeb3[Any], pools: list[str], oracle: str | None, order_book: str | None
    ) -> None:
        self.w3 = w3
        self._contracts: dict[tuple[str, str], AsyncContract] = {}
        self.pool_addrs = [w3.to_checksum_address(p) for p in pools]
        self.oracle = self._bind("PriceOracle", oracle) if oracle else None
        self.book = self._bind("OrderBook", order_book) if order_book else None
        self._tokens: dict[str, tuple[str, str]] = {}
        self._decimals: dict[str, int] = {}
        self._markets: dict[int, tuple[str, str]] = {}
        self._tolerance: dict[int, int] = {}
        self._market_calls = 0  # markets whose getMarket is in the per-block batch
        self._per_block: list[RawCall] | None = None
        self._priced: list[str] = []

    def _bind(self, name: str, address: str) -> AsyncContract:
        # Bound once: building a contract object parses its ABI, which costs more than a call.
        key = (name, address.lower())
        if key not in self._contracts:
            self._contracts[key] = self.w3.eth.contract(
                address=self.w3.to_checksum_address(address), abi=load_artifact(name).abi
            )
        return self._contracts[key]

    async def _static(self) -> None:
        """What never changes (pool tokens, decimals), read once."""
        for addr in self.pool_addrs:
            if addr not in self._tokens:
                pool = self._bind("LiquidityPool", addr)
                t0 = str(await pool.functions.token0().call()).lower()
                t1 = str(await pool.functions.token1().call()).lower()
                self._tokens[addr] = (t0, t1)
        for token in {t for pair in self._tokens.values() for t in pair}:
            if token not in self._decimals:
                erc20 = self._bind("DevnetToken", token)
                self._decimals[token] = int(await erc20.functions.decimals().call())

    def _calls(self) -> list[RawCall]:
        """The block's reads, encoded once: reserves and fee per pool, each token's oracle
        price, the market count."""
        if self._per_block is None:
            calls = []
            for addr in self.pool_addrs:
                pool = self._bind("LiquidityPool", addr)
                calls += [RawCall.of(pool, "getReserves"), RawCall.of(pool, "currentFee")]
            self._priced = sorted(self._decimals) if self.oracle is not None else []
            if self.oracle is not None:
                calls += [
                    RawCall.of(self.oracle, "tryGetPrice", self.w3.to_checksum_address(t))
                    for t in self._priced
                ]
            if self.book is not None:
                calls.append(RawCall.of(self.book, "marketCount"))
                # Each market's terms every block: the owner may change a tolerance.
                calls += [RawCall.of(self.book, "getMarket", m) for m in sorted(self._markets)]
                self._market_calls = len(self._markets)
            self._per_block = calls
        return self._per_block

    async def read(self, block: int) -> MarketSnapshot:
        """Every read of the block at once (reserves, fees, oracle prices, market count): the
        snapshot costs about one round trip, not one per pool and token."""
        await self._static()
        results = await call_all(self.w3, self._calls(), block)
        snap = MarketSnapshot(block=block)
        for i, addr in enumerate(self.pool_addrs):
            t0, t1 = self._tokens[addr]
            (r0, r1, _ts), (fee,) = results[2 * i], results[2 * i + 1]
            snap.pools.append(PoolState(addr.lower(), t0, t1, int(r0), int(r1), int(fee)))
        rest = results[2 * len(self.pool_addrs) :]
        snap.prices = {t: (int(p), bool(fresh)) for t, (p, fresh) in zip(self._priced, rest, strict=False)}
        snap.decimals = dict(self._decimals)
        if self.book is not None:
            tail = rest[len(self._priced) :]
            count = int(tail[0][0])
            for (m,), market in zip(tail[1:], sorted(self._markets), strict=True):
                self._tolerance[market] = int(m[2])
            for market in range(1, count + 1):
                if market not in self._markets:
                    m = await self.book.functions.getMarket(market).call(block_identifier=block)
                    self._markets[market] = (str(m[0]).lower(), str(m[1]).lower())
                    self._tolerance[market] = int(m[2])
            if len(self._markets) != self._market_calls:
                self._per_block = None  # new markets: their terms join the next block's batch
            snap.markets = dict(self._markets)
            snap.tolerance = dict(self._tolerance)
        return snap

"""A fast harness to unit-test a strategy without a chain: build a market (tokens with oracle
prices, pools with reserves, OrderBook markets), candidates and a `BlockContext`, and run the
strategy's `on_block` on them. No anvil, no store, no network: a test takes milliseconds.

    from keepers.sdk.testing import MarketBuilder, block_context, make_strategy, run_block

    m = MarketBuilder()
    m.token("WETH", usd=2_000).token("USDC", usd=1, decimals=6)
    m.pool("WETH", "USDC", 1_000, 2_000_000, fee_pips=3_000)  # whole tokens
    m.market(1, "WETH", "USDC")
    order = m.order(1, amount_in=1, min_out=1_900, fee_bps=30)  # an OrderView
    actions = run_block(make_strategy(MyStrategy, min_fee_bps=5), block_context(m, [order]))
    assert actions[0].order_ids == (order.order_id,)

What needs a chain (`ctx.reader` reads, the contracts accepting the calldata) is for the
`keepers_devnet` fixture of the keepers pytest plugin, which comes with the development workshop
(`pip install keepers-workshop`); this harness checks the strategy's decisions and needs only
keepers. The fixture's types are named here too, so a plugin's tests import only keepers.sdk:

    from keepers.sdk.testing import Devnet

    def test_fills_on_anvil(keepers_devnet: Devnet) -> None: ...
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from keepers.engine.market import MarketSnapshot, PoolState
from keepers.engine.strategy import BlockContext, Strategy
from keepers.engine.views import OrderView
from keepers.tx.actions import Action

if TYPE_CHECKING:
    # keepers-workshop's, named here for plugin authors; the runtime never imports it.
    from keepers_workshop.testing.devnet import Devnet, KeeperHarness

__all__ = [
    "KEEPER",
    "ORDER_KINDS",
    "Devnet",
    "KeeperHarness",
    "MarketBuilder",
    "address",
    "block_context",
    "make_strategy",
    "run_block",
]

#: Named here, imported on first use: the devnet harness (anvil, the local relay, a keeper
#: loop) is the development workshop's, a distribution of its own (keepers-workshop), and for
#: tests on anvil, not for the unit tests this module is for.
_DEVNET_NAMES = frozenset({"Devnet", "KeeperHarness"})
_DEVNET_MODULE = "keepers_workshop.testing.devnet"


def __getattr__(name: str) -> Any:
    """`Devnet` and `KeeperHarness`, imported from keepers_workshop.testing.devnet on first use."""
    if name in _DEVNET_NAMES:
        try:
            module = importlib.import_module(_DEVNET_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name not in ("keepers_workshop", "keepers_workshop.testing", _DEVNET_MODULE):
                raise  # the workshop is there, something it needs is not: say that, not this
            raise ImportError(
                f"keepers.sdk.testing.{name} is the devnet harness of the development workshop: "
                "install keepers-workshop (workshop/ in the keepers repository)"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The OrderBook's order kinds by name.
ORDER_KINDS = {"limit": 0, "stop-loss": 1, "take-profit": 2, "twap": 3, "iceberg": 4}
_S = TypeVar("_S", bound=Strategy[Any])


def address(name: str) -> str:
    """A stable made-up address (lowercase) for a name: a token, a pool, a contract."""
    return "0x" + hashlib.sha256(name.encode()).hexdigest()[:40]


#: The keeper's address in a built context.
KEEPER = address("keeper")
_CONTRACTS = ("order_book", "oracle", "lending_market", "vault", "flash_liquidator")


class MarketBuilder:
    """Tokens, pools and OrderBook markets for one block, in whole tokens; `snapshot()` is the
    `MarketSnapshot` a strategy sees. Every method returns the builder, to chain calls."""

    def __init__(self, block: int = 100) -> None:
        self.block = block
        self.tokens: dict[str, str] = {}
        self._decimals: dict[str, int] = {}
        self._prices: dict[str, tuple[int, bool]] = {}
        self._pools: list[PoolState] = []
        self._markets: dict[int, tuple[str, str]] = {}
        self._tolerance: dict[int, int] = {}
        self._next_order = 1

    def addr(self, symbol: str) -> str:
        """A token's address (lowercase)."""
        return self.tokens[symbol]

    def units(self, symbol: str, amount: float | int | str | Decimal) -> int:
        """Whole tokens in the token's raw units (1.5 WETH -> 1_500_000_000_000_000_000)."""
        return int(Decimal(str(amount)) * 10 ** self._decimals[self.tokens[symbol]])

    def token(
        self, symbol: str, *, usd: float | int | str | None = None, decimals: int = 18, fresh: bool = True
    ) -> MarketBuilder:
        """A token; `usd` is its oracle price (None: the oracle has none; fresh=False: stale)."""
        self.tokens[symbol] = address(f"token:{symbol}")
        self._decimals[self.tokens[symbol]] = decimals
        if usd is not None:
            self._prices[self.tokens[symbol]] = (int(Decimal(str(usd)) * 10**18), fresh)
        return self

    def price(self, symbol: str, usd: float | int | str, *, fresh: bool = True) -> MarketBuilder:
        """Moves a token's oracle price."""
        self._prices[self.tokens[symbol]] = (int(Decimal(str(usd)) * 10**18), fresh)
        return self

    def pool(
        self,
        a: str,
        b: str,
        reserve_a: float | int | str,
        reserve_b: float | int | str,
        *,
        fee_pips: int = 3_000,
        name: str | None = None,
    ) -> MarketBuilder:
        """A pool holding `reserve_a` of `a` and `reserve_b` of `b` (whole tokens); `fee_pips`
        is its fee in millionths (3_000 = 0.3%). Its address is `address(name)` (default
        "pool:A/B#n")."""
        ta, tb = self.tokens[a], self.tokens[b]
        ra, rb = self.units(a, reserve_a), self.units(b, reserve_b)
        pool = address(name or f"pool:{a}/{b}#{len(self._pools)}")
        # Token order as on chain: token0 is the lower address.
        if int(ta, 16) < int(tb, 16):
            self._pools.append(PoolState(pool, ta, tb, ra, rb, fee_pips))
        else:
            self._pools.append(PoolState(pool, tb, ta, rb, ra, fee_pips))
        return self

    def market(
        self, market_id: int, token_in: str, token_out: str, *, tolerance_bps: int = 300
    ) -> MarketBuilder:
        """An OrderBook market selling `token_in` for `token_out`, with its fairness tolerance."""
        self._markets[market_id] = (self.tokens[token_in], self.tokens[token_out])
        self._tolerance[market_id] = tolerance_bps
        return self

    def order(
        self,
        market_id: int,
        amount_in: float | int | str,
        min_out: float | int | str,
        *,
        order_id: int | None = None,
        kind: str = "limit",
        fee_bps: int = 10,
        remaining: float | int | str | None = None,
        trigger: int = 0,
        clip: float | int | str = 0,
        tolerance_bps: int = 0,
        status: str = "open",
        owner: str | None = None,
        slices: int = 0,
        interval: int = 0,
    ) -> OrderView:
        """An open order on a market (amounts in whole tokens of the market's tokens), as the
        candidate source gives it to a strategy. `trigger` is the raw stop/take-profit trigger
        (tokenOut per tokenIn, 1e18); `clip` an iceberg's clip size in whole tokens."""
        token_in, token_out = self._markets[market_id]
        d_in, d_out = self._decimals[token_in], self._decimals[token_out]

        def raw(x: float | int | str, d: int) -> int:
            return int(Decimal(str(x)) * 10**d)

        if order_id is None:
            order_id = self._next_order
        self._next_order = max(self._next_order, order_id + 1)
        return OrderView(
            chain_id=31337,
            order_id=order_id,
            book=address("order_book"),
            owner=owner or address("trader"),
            market=market_id,
            kind=ORDER_KINDS[kind],
            amount_in=raw(amount_in, d_in),
            min_amount_out=raw(min_out, d_out),
            remaining=raw(amount_in if remaining is None else remaining, d_in),
            expiry=2**32 - 1,
            keeper_fee_bps=fee_bps,
            trigger_or_clip=trigger or raw(clip, d_in),
            slices=slices,
            interval=interval,
            tolerance_bps=tolerance_bps,
            status=status,
            placed_block=self.block - 1,
            updated_block=self.block - 1,
        )

    def snapshot(self) -> MarketSnapshot:
        """The market as a strategy sees it at this block."""
        return MarketSnapshot(
            block=self.block,
            pools=list(self._pools),
            prices=dict(self._prices),
            decimals=dict(self._decimals),
            markets=dict(self._markets),
            tolerance=dict(self._tolerance),
        )


def block_context(
    market: MarketBuilder | MarketSnapshot | None = None,
    candidates: Iterable[Any] = (),
    *,
    number: int | None = None,
    timestamp: int = 1_700_000_000,
    chain: str = "test",
    chain_id: int = 31337,
    contracts: dict[str, str] | None = None,
    keeper_address: str = KEEPER,
    reader: Any = None,
) -> BlockContext:
    """The `BlockContext` the runtime would build: fresh prices from the snapshot, every
    platform contract at a made-up address (`address("order_book")`, ...) unless given."""
    snap = market.snapshot() if isinstance(market, MarketBuilder) else market
    return BlockContext(
        chain=chain,
        chain_id=chain_id,
        number=number if number is not None else (snap.block if snap else 100),
        timestamp=timestamp,
        candidates=list(candidates),
        prices={t: p for t, (p, fresh) in snap.prices.items() if fresh} if snap else {},
        contracts=contracts if contracts is not None else {c: address(c) for c in _CONTRACTS},
        market=snap,
        reader=reader,
        keeper_address=keeper_address,
    )


def make_strategy(cls: type[_S], **params: Any) -> _S:
    """The strategy with `params` validated by its Params model, as the runtime builds it."""
    return cls(cls.Params.model_validate(params))


def run_block(strategy: Strategy[Any], ctx: BlockContext) -> Sequence[Action]:
    """`await strategy.on_block(ctx)` from synchronous test code."""
    return anyio.run(strategy.on_block, ctx)

"""The traders' read-only order API, on a port of its own (never the /metrics port):
`GET /orders/{id}`, `GET /orders?owner=0x...&limit=&after=` (paginated, newest first) and
`GET /openapi.json` (an OpenAPI 3.1 document generated from the response models below, so it
cannot drift from what is served). Each client (IP address) has a token bucket; listed browser
origins get CORS headers. Amounts are shown raw (uint256 as decimal strings) and with the
market's token decimals applied, from market terms read off the request path."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from sqlalchemy import Engine

import keepers
from keepers.chain.artifacts import load_artifact
from keepers.config.schema import OrderApiSettings
from keepers.obs.health import error_response, json_errors
from keepers.store.order_status import FillView, OrderView, order_status, orders_of, parse_order_id

if TYPE_CHECKING:
    from web3 import AsyncWeb3

log = structlog.get_logger("order_api")

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
_ZERO = "0x" + "0" * 40


# --- market terms (token decimals), read off the request path ----------------------------------


class MarketTerms(NamedTuple):
    token_in: str
    token_out: str
    decimals_in: int
    decimals_out: int


class MarketDirectory:
    """OrderBook market id -> its tokens and their decimals (fixed when a market is registered).
    Read from the node at startup and, for a market first seen later, in the background: a
    request never waits on the node; until the terms are known its human fields are null."""

    def __init__(
        self,
        fetch: Callable[[int], Awaitable[MarketTerms | None]] | None = None,
        count: Callable[[], Awaitable[int]] | None = None,
        terms: dict[int, MarketTerms] | None = None,
        retry_seconds: float = 5.0,
    ) -> None:
        self._fetch, self._count = fetch, count
        self._terms = dict(terms or {})
        self._retry_seconds = retry_seconds
        self._retry_at: dict[int, float] = {}
        self._loading: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, market: int) -> MarketTerms | None:
        terms = self._terms.get(market)
        if terms is None:
            self._load_soon(market)
        return terms

    def _load_soon(self, market: int) -> None:
        if self._fetch is None or market in self._loading:
            return
        if time.monotonic() < self._retry_at.get(market, 0.0):
            return
        self._loading.add(market)
        self._spawn(self._load(market))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, market: int) -> None:
        assert self._fetch is not None
        try:
            terms = await self._fetch(market)
        except Exception as exc:  # noqa: BLE001 - tried again on a later request
            log.warning("market terms not read", market=market, error=exc.__class__.__name__)
            terms = None
        finally:
            self._loading.discard(market)
        if terms is None:
            self._retry_at[market] = time.monotonic() + self._retry_seconds
        else:
            self._terms[market] = terms

    async def _warm(self) -> None:
        if self._count is None:
            return
        try:
            count = await self._count()
        except Exception as exc:  # noqa: BLE001 - markets then load as orders show them
            log.warning("market count not read", error=exc.__class__.__name__)
            return
        for market in range(1, count + 1):
            if market not in self._terms:
                self._loading.add(market)
                await self._load(market)

    async def start(self, _app: web.Application) -> None:
        self._spawn(self._warm())

    async def stop(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def onchain_markets(w3: AsyncWeb3[Any], order_book: str | None) -> MarketDirectory:
    """Market terms from the OrderBook's getMarket (tokens and decimals, stored there at
    registration): one read per market, ever."""
    if order_book is None:
        return MarketDirectory()
    book = w3.eth.contract(address=w3.to_checksum_address(order_book), abi=load_artifact("OrderBook").abi)

    async def count() -> int:
        return int(await book.functions.marketCount().call())

    async def fetch(market: int) -> MarketTerms | None:
        if not 0 < market < 2**16:
            return None
        m = await book.functions.getMarket(market).call()
        if str(m[0]).lower() == _ZERO:
            return None
        return MarketTerms(str(m[0]).lower(), str(m[1]).lower(), int(m[3]), int(m[4]))

    return MarketDirectory(fetch, count)


def decimal_amount(raw: int, decimals: int) -> str:
    """`raw` smallest units as an exact decimal string: (1_500_000, 6) -> "1.5"."""
    whole, frac = divmod(raw, 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole}.{digits}" if digits else str(whole)


def decimal_price(amount_out: int, amount_in: int, terms: MarketTerms) -> str | None:
    """tokenOut per whole tokenIn, decimals applied, to 28 significant digits."""
    if amount_in <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 28
        price = Decimal(amount_out * 10**terms.decimals_in) / Decimal(amount_in * 10**terms.decimals_out)
        return format(price.normalize(), "f")


# --- response models: what is served, and the OpenAPI document generated from them --------------

_UINT = r"^[0-9]{1,78}$"
_DEC = r"^[0-9]+(\.[0-9]+)?$"


def _raw(what: str) -> Any:
    return Field(
        pattern=_UINT, description=f"{what}, in the token's smallest units (a uint256 as a decimal string)"
    )


def _human(what: str) -> Any:
    return Field(
        pattern=_DEC,
        description=f"{what} with the token's decimals applied; null until the market's terms are known",
    )


class FillOut(BaseModel):
    tx_hash: str
    block: int
    amount_in: str = _raw("input spent")
    amount_out: str = _raw("output received (before the keeper fee)")
    price_raw: float = Field(description="amount_out / amount_in in smallest units")
    keeper_fee: str = _raw("keeper fee, in the output token")
    keeper: str
    amount_in_decimal: str | None = _human("amount_in")
    amount_out_decimal: str | None = _human("amount_out")
    keeper_fee_decimal: str | None = _human("keeper_fee")
    price: str | None = Field(pattern=_DEC, description="tokenOut per tokenIn, decimals applied")


class OrderOut(BaseModel):
    chain_id: int
    order_id: int
    owner: str = Field(pattern=r"^0x[0-9a-f]{40}$")
    market: int = Field(description="the OrderBook market: token_in -> token_out")
    token_in: str | None
    token_out: str | None
    decimals_in: int | None
    decimals_out: int | None
    kind: str = Field(description="limit, stop-loss, take-profit, twap or iceberg")
    status: str = Field(
        description="open, armed, partially_filled, filled, cancelled, expired, or reorged (a reorg "
        "took its fill off the chain and it is open again)"
    )
    amount_in: str = _raw("input escrowed")
    remaining: str = _raw("input not filled yet")
    min_amount_out: str = _raw("least output accepted for amount_in")
    amount_in_decimal: str | None = _human("amount_in")
    remaining_decimal: str | None = _human("remaining")
    min_amount_out_decimal: str | None = _human("min_amount_out")
    limit_price: str | None = Field(
        pattern=_DEC, description="min_amount_out / amount_in as tokenOut per tokenIn, decimals applied"
    )
    keeper_fee_bps: int
    placed_block: int
    executable_block: int | None
    filled_block: int | None
    latency_blocks: int | None = Field(
        description="first fill block minus executable block (1: the next block)"
    )
    reorged_block: int | None
    fills: list[FillOut]


class OrderPage(BaseModel):
    orders: list[OrderOut] = Field(description="newest (highest id) first")
    next: str | None = Field(
        pattern=_UINT, description="the `after` cursor of the next page; null on the last"
    )
    next_url: str | None = Field(description="the next page's path and query; null on the last")


class ApiError(BaseModel):
    error: str


def _fill_out(f: FillView, t: MarketTerms | None) -> FillOut:
    return FillOut(
        tx_hash=f.tx_hash, block=f.block, amount_in=str(f.amount_in), amount_out=str(f.amount_out),
        price_raw=f.price_raw, keeper_fee=str(f.keeper_fee), keeper=f.keeper,
        amount_in_decimal=decimal_amount(f.amount_in, t.decimals_in) if t else None,
        amount_out_decimal=decimal_amount(f.amount_out, t.decimals_out) if t else None,
        keeper_fee_decimal=decimal_amount(f.keeper_fee, t.decimals_out) if t else None,
        price=decimal_price(f.amount_out, f.amount_in, t) if t else None,
    )  # fmt: skip


def order_out(v: OrderView, t: MarketTerms | None) -> OrderOut:
    return OrderOut(
        chain_id=v.chain_id, order_id=v.order_id, owner=v.owner, market=v.market,
        token_in=t.token_in if t else None, token_out=t.token_out if t else None,
        decimals_in=t.decimals_in if t else None, decimals_out=t.decimals_out if t else None,
        kind=v.kind, status=v.status,
        amount_in=str(v.amount_in), remaining=str(v.remaining), min_amount_out=str(v.min_amount_out),
        amount_in_decimal=decimal_amount(v.amount_in, t.decimals_in) if t else None,
        remaining_decimal=decimal_amount(v.remaining, t.decimals_in) if t else None,
        min_amount_out_decimal=decimal_amount(v.min_amount_out, t.decimals_out) if t else None,
        limit_price=decimal_price(v.min_amount_out, v.amount_in, t) if t else None,
        keeper_fee_bps=v.keeper_fee_bps, placed_block=v.placed_block,
        executable_block=v.executable_block, filled_block=v.filled_block,
        latency_blocks=v.latency_blocks, reorged_block=v.reorged_block,
        fills=[_fill_out(f, t) for f in v.fills],
    )  # fmt: skip


def _json(status: int, schema: str, description: str, **extra: Any) -> dict[str, Any]:
    body = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    return {str(status): {"description": description, "content": {"application/json": body}, **extra}}


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document; its schemas are the response models' own."""
    _, defs = models_json_schema(
        [(OrderOut, "serialization"), (OrderPage, "serialization"), (ApiError, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    retry_after = {"description": "seconds until a request is allowed", "schema": {"type": "integer"}}
    too_many = _json(
        429, "ApiError", "this client's rate limit is spent", headers={"Retry-After": retry_after}
    )
    bad = _json(400, "ApiError", "a malformed parameter")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keepers order API",
            "version": keepers.__version__,
            "description": "Where a trader's orders stand, from the keeper's store (read-only).",
        },
        "paths": {
            "/orders/{order_id}": {
                "get": {
                    "summary": "One order",
                    "parameters": [
                        {
                            "name": "order_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": _UINT},
                        },
                    ],
                    "responses": {
                        **_json(200, "OrderOut", "the order"),
                        **bad,
                        **_json(404, "ApiError", "not placed, or not synced yet"),
                        **too_many,
                    },
                }
            },
            "/orders": {
                "get": {
                    "summary": "An owner's orders, newest first, a page at a time",
                    "parameters": [
                        {
                            "name": "owner",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": DEFAULT_LIMIT,
                            },
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "a page's `next`: orders with lower ids",
                            "schema": {"type": "string", "pattern": _UINT},
                        },
                    ],
                    "responses": {**_json(200, "OrderPage", "a page of orders"), **bad, **too_many},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {"schemas": defs["$defs"]},
    }


# --- rate limit and CORS ---------------------------------------------------------------------


class TokenBuckets:
    """A token bucket per client: `burst` requests at once, refilled at `rate` per second."""

    MAX_CLIENTS = 10_000

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str) -> float:
        """0 if the client may make a request now (one token taken), else seconds to wait."""
        now = self.clock()
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            if len(self._buckets) > self.MAX_CLIENTS:
                self._forget_full(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drops buckets that have refilled: a new bucket for them would be the same."""
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[client]


def _client(request: web.Request, forwarded: bool) -> str:
    if forwarded:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if hops:
            return hops[-1]  # what the trusted proxy saw; earlier entries are the client's word
    return request.remote or "?"


def _cors(origins: list[str]) -> Middleware:
    allowed, any_origin = set(origins), "*" in origins

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        listed = origin is not None and (any_origin or origin in allowed)
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            if not listed:
                return error_response(403, "origin not allowed")
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                response.headers["Access-Control-Allow-Headers"] = asked
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if listed:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            response.headers["Vary"] = "Origin"
        return response

    return cors


def _rate_limited(buckets: TokenBuckets, forwarded: bool) -> Middleware:
    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        wait = buckets.take(_client(request, forwarded))
        if wait > 0:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            return error_response(429, "too many requests: slow down", headers)
        return await handler(request)

    return rate_limit


# --- the app ---------------------------------------------------------------------------------


def _shown(raw: str) -> str:
    """A client's value, escaped and cut short, for an error message."""
    shown = ascii(raw)
    return shown if len(shown) <= 42 else shown[:41] + "'..."


def make_order_api(
    engine: Engine,
    chain_id: int,
    settings: OrderApiSettings | None = None,
    markets: MarketDirectory | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    settings = settings or OrderApiSettings()
    directory = markets or MarketDirectory()
    document = openapi_document()

    async def order(req: web.Request) -> web.Response:
        raw = req.match_info["order_id"]
        order_id = parse_order_id(raw)
        if order_id is None:
            return error_response(400, f"order id must be a decimal integer below 2**256, got {_shown(raw)}")
        view = await anyio.to_thread.run_sync(order_status, engine, chain_id, order_id)
        if view is None:
            return error_response(
                404, f"no order {order_id} on chain {chain_id} (not placed, or not synced yet)"
            )
        return web.json_response(order_out(view, directory.get(view.market)).model_dump(mode="json"))

    async def orders(req: web.Request) -> web.Response:
        owner = req.query.get("owner", "")
        if not _ADDRESS.fullmatch(owner):
            return error_response(400, "owner must be a 0x-prefixed 20-byte hex address")
        raw_limit = req.query.get("limit", str(DEFAULT_LIMIT))
        if not (
            raw_limit.isascii()
            and raw_limit.isdigit()
            and len(raw_limit) <= 4
            and 1 <= int(raw_limit) <= MAX_LIMIT
        ):
            return error_response(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
        after: int | None = None
        if "after" in req.query:
            after = parse_order_id(req.query["after"])
            if after is None:
                return error_response(400, "after must be a page's next cursor (an order id)")
        views = await anyio.to_thread.run_sync(orders_of, engine, chain_id, owner, limit + 1, after)
        cursor = str(views[limit - 1].order_id) if len(views) > limit else None
        page = OrderPage(
            orders=[order_out(v, directory.get(v.market)) for v in views[:limit]],
            next=cursor,
            next_url=f"/orders?owner={owner}&limit={limit}&after={cursor}" if cursor else None,
        )
        return web.json_response(page.model_dump(mode="json"))

    async def openapi(_req: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application(
        middlewares=[
            _cors(settings.cors_origins),
            _rate_limited(
                TokenBuckets(settings.rate_limit, settings.burst, clock), settings.trust_forwarded_for
            ),
            json_errors,
        ]
    )
    app.router.add_get("/orders/{order_id}", order)
    app.router.add_get("/orders", orders)
    app.router.add_get("/openapi.json", openapi)
    app.on_startup.append(directory.start)
    app.on_cleanup.append(directory.stop)
    return app

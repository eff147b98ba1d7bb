"""The traders' order API: its OpenAPI document against what it serves, pagination, CORS, the
per-client rate limit and decimals-adjusted amounts, over a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine
from sqlmodel import Session

from keepers.chain.events import Event
from keepers.config.schema import OrderApiSettings
from keepers.obs.order_api import (
    MarketDirectory,
    MarketTerms,
    TokenBuckets,
    decimal_amount,
    make_order_api,
    openapi_document,
)
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.projection import store_events
from tests.helpers.order_events import BOOK, OWNER, placed

CHAIN = 1
WETH, USDC = "0x" + "11" * 20, "0x" + "22" * 20
MARKETS = MarketDirectory(terms={1: MarketTerms(WETH, USDC, 18, 6)})
OTHER = "0x00000000000000000000000000000000000000bb"
UNLIMITED = OrderApiSettings(rate_limit=1e9, burst=10**9)


def _store(tmp_path: Path, events: list[Event]) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    migrate(engine)
    with Session(engine) as s, s.begin():
        store_events(s, CHAIN, events)
    return engine


def _filled(order_id: int, block: int) -> Event:
    args = {"id": order_id, "keeper": "0x" + "cc" * 20, "amountIn": 10**18, "amountOut": 2_100_500_000,
            "keeperFee": 2_100_500, "remaining": 0}  # fmt: skip
    return Event(block, f"0xf{block}", f"0x{block:064x}", 1, BOOK, "OrderBook", "OrderFilled", args)


def _run(
    engine: Engine,
    go: Callable[[TestClient[Any, Any]], Awaitable[None]],
    settings: OrderApiSettings = UNLIMITED,
    **kw: Any,
) -> None:
    async def main() -> None:
        async with TestClient(TestServer(make_order_api(engine, CHAIN, settings, **kw))) as client:
            await go(client)

    asyncio.run(main())


# --- the OpenAPI document, validated against real responses -----------------------------------


def _check(doc: dict[str, Any], path: str, status: int, body: Any) -> None:
    """`body` against the document's schema for `path`'s GET answering `status`."""
    schema = doc["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)


def test_served_responses_match_the_served_openapi_document(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10), _filled(7, 12), placed(8, 13), placed(9, 14)])

    async def go(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        doc = await resp.json()
        assert doc == openapi_document()
        assert doc["openapi"] == "3.1.0"
        for schema in doc["components"]["schemas"].values():
            jsonschema.Draft202012Validator.check_schema(schema)
        answers = [
            ("/orders/{order_id}", "/orders/7", 200),
            ("/orders/{order_id}", "/orders/8", 200),
            ("/orders/{order_id}", "/orders/99", 404),
            ("/orders/{order_id}", "/orders/x", 400),
            ("/orders", f"/orders?owner={OWNER}&limit=2", 200),
            ("/orders", f"/orders?owner={OWNER}&limit=2&after=8", 200),
            ("/orders", f"/orders?owner={OTHER}", 200),
            ("/orders", "/orders?owner=nobody", 400),
            ("/orders", f"/orders?owner={OWNER}&limit=0", 400),
        ]
        for path, target, status in answers:
            resp = await client.get(target)
            assert resp.status == status, (target, await resp.text())
            _check(doc, path, status, await resp.json())
        with pytest.raises(jsonschema.ValidationError):  # the check bites
            _check(doc, "/orders/{order_id}", 200, {"order_id": "7"})

    _run(engine, go, markets=MARKETS)


def test_a_429_matches_the_document_too(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10)])

    async def go(client: TestClient[Any, Any]) -> None:
        await client.get("/orders/7")
        resp = await client.get("/orders/7")
        assert resp.status == 429
        _check(openapi_document(), "/orders/{order_id}", 429, await resp.json())

    _run(engine, go, OrderApiSettings(rate_limit=0.001, burst=1))


# --- pagination -------------------------------------------------------------------------------


def test_pages_walk_every_order_once_newest_first(tmp_path: Path) -> None:
    ids = list(range(1, 251))
    mine = [placed(i, 10 + i) for i in ids]
    others = [placed(1000 + i, 300 + i, owner=OTHER) for i in range(5)]
    engine = _store(tmp_path, mine + others)

    async def go(client: TestClient[Any, Any]) -> None:
        seen: list[int] = []
        target: str | None = f"/orders?owner={OWNER}&limit=100"
        pages = 0
        while target is not None:
            resp = await client.get(target)
            assert resp.status == 200, await resp.text()
            page = await resp.json()
            assert len(page["orders"]) <= 100
            seen += [o["order_id"] for o in page["orders"]]
            pages += 1
            target = page["next_url"]
            assert (page["next"] is None) == (target is None)
        assert pages == 3
        assert seen == sorted(ids, reverse=True), "every order once, newest first"
        # the default page is 100; a cursor past the newest order starts at the newest
        default = await (await client.get(f"/orders?owner={OWNER}")).json()
        assert [o["order_id"] for o in default["orders"]] == seen[:100]
        assert default["next"] == str(seen[99])
        huge = await (await client.get(f"/orders?owner={OWNER}&limit=1&after={2**256 - 1}")).json()
        assert [o["order_id"] for o in huge["orders"]] == [250]
        exact = await (await client.get(f"/orders?owner={OWNER}&limit=250")).json()
        assert len(exact["orders"]) == 250
        assert exact["next"] is None, "no empty last page"

    _run(engine, go)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be"),
        ("limit=1001", "limit must be"),
        ("limit=-1", "limit must be"),
        ("limit=0010000", "limit must be"),
        ("limit=%D9%A3", "limit must be"),
        ("limit=", "limit must be"),
        ("after=", "after must be"),
        ("after=-1", "after must be"),
        ("after=0x10", "after must be"),
        ("after=" + "9" * 100, "after must be"),
    ],
)
def test_bad_page_parameters_are_400(tmp_path: Path, query: str, message: str) -> None:
    engine = _store(tmp_path, [placed(7, 10)])

    async def go(client: TestClient[Any, Any]) -> None:
        resp = await client.get(f"/orders?owner={OWNER}&{query}")
        assert resp.status == 400
        assert (await resp.json())["error"].startswith(message)

    _run(engine, go)


# --- decimals ---------------------------------------------------------------------------------


def test_amounts_and_prices_with_the_tokens_decimals_beside_the_raw_ones(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10), _filled(7, 12)])

    async def go(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/orders/7")).json()
        assert (body["token_in"], body["token_out"], body["decimals_in"], body["decimals_out"]) == (
            WETH,
            USDC,
            18,
            6,
        )
        assert (body["amount_in"], body["amount_in_decimal"]) == (str(10**18), "1")
        assert (body["min_amount_out"], body["min_amount_out_decimal"]) == ("1", "0.000001")
        assert body["limit_price"] == "0.000001"  # USDC per WETH
        (fill,) = body["fills"]
        assert (fill["amount_out"], fill["amount_out_decimal"], fill["price"]) == (
            "2100500000",
            "2100.5",
            "2100.5",
        )
        assert fill["keeper_fee_decimal"] == "2.1005"
        assert fill["price_raw"] == 2_100_500_000 / 10**18

    _run(engine, go, markets=MARKETS)


def test_unknown_market_terms_are_null_and_loaded_off_the_request_path(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10)])
    asked: list[int] = []
    release = asyncio.Event()

    async def fetch(market: int) -> MarketTerms | None:
        asked.append(market)
        await release.wait()  # a slow node: the request must not wait for it
        return MarketTerms(WETH, USDC, 18, 6)

    directory = MarketDirectory(fetch)

    async def go(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/orders/7")).json()
        assert (body["amount_in"], body["amount_in_decimal"], body["limit_price"]) == (
            str(10**18),
            None,
            None,
        )
        await (await client.get("/orders/7")).json()
        release.set()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if directory.get(1) is not None:
                break
        body = await (await client.get("/orders/7")).json()
        assert body["amount_in_decimal"] == "1"
        assert asked == [1], "read once, however many requests saw it missing"

    _run(engine, go, markets=directory)


@pytest.mark.parametrize(
    ("raw", "decimals", "shown"),
    [(0, 18, "0"), (1, 18, "0." + "0" * 17 + "1"), (1_500_000, 6, "1.5"), (2**256 - 1, 0, str(2**256 - 1)),
     (10**18, 18, "1"), (123, 2, "1.23")],
)  # fmt: skip
def test_decimal_amounts_are_exact(raw: int, decimals: int, shown: str) -> None:
    assert decimal_amount(raw, decimals) == shown


# --- CORS -------------------------------------------------------------------------------------

APP = "https://app.example.org"


def test_cors_answers_listed_origins_only(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10)])
    settings = OrderApiSettings(cors_origins=[APP], rate_limit=1e9, burst=10**9)
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"}

    async def go(client: TestClient[Any, Any]) -> None:
        resp = await client.options("/orders/7", headers={"Origin": APP, **preflight})
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        resp = await client.get("/orders/7", headers={"Origin": APP})
        assert (resp.status, resp.headers["Access-Control-Allow-Origin"]) == (200, APP)
        assert resp.headers["Vary"] == "Origin"
        resp = await client.get("/orders/99", headers={"Origin": APP})  # errors are readable too
        assert (resp.status, resp.headers["Access-Control-Allow-Origin"]) == (404, APP)
        # another origin: refused at preflight, and no header that lets a browser read the answer
        resp = await client.options("/orders/7", headers={"Origin": "https://evil.example", **preflight})
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await client.get("/orders/7", headers={"Origin": "https://evil.example"})
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers

    _run(engine, go, settings)


def test_no_cors_by_default(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10)])

    async def go(client: TestClient[Any, Any]) -> None:
        resp = await client.options(
            "/orders/7", headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
        )
        assert resp.status == 403
        resp = await client.get("/orders/7", headers={"Origin": APP})
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers

    _run(engine, go)


def test_cors_origins_are_origins() -> None:
    OrderApiSettings(cors_origins=["*", "http://localhost:3000", APP])
    for bad in ("app.example.org", "https://app.example.org/", "https://a.org/path", "javascript:x"):
        with pytest.raises(ValueError, match="an origin is"):
            OrderApiSettings(cors_origins=[bad])


# --- rate limit -------------------------------------------------------------------------------


def test_a_client_past_its_burst_gets_429_with_retry_after(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10)])
    now = [0.0]

    async def go(client: TestClient[Any, Any]) -> None:
        for _ in range(3):
            assert (await client.get("/orders/7")).status == 200
        resp = await client.get("/orders/7")
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
        assert (await resp.json())["error"].startswith("too many requests")
        assert (await client.get("/orders?owner=" + OWNER)).status == 429, "one bucket for every path"
        now[0] += 2.0
        assert (await client.get("/orders/7")).status == 200
        assert (await client.get("/orders/7")).status == 429

    _run(engine, go, OrderApiSettings(rate_limit=0.5, burst=3), clock=lambda: now[0])


def test_buckets_are_per_client_and_refill() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=10.0, burst=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.1)
    assert buckets.take("b") == 0.0, "another client has its own bucket"
    now[0] += 0.1
    assert buckets.take("a") == 0.0


def test_behind_a_proxy_the_client_is_the_last_forwarded_address(tmp_path: Path) -> None:
    engine = _store(tmp_path, [placed(7, 10)])
    settings = OrderApiSettings(rate_limit=0.001, burst=1, trust_forwarded_for=True)

    async def go(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/orders/7", headers={"X-Forwarded-For": "9.9.9.9, 1.1.1.1"})).status == 200
        # a spoofed first hop does not buy a fresh bucket: the proxy's own entry is what counts
        assert (await client.get("/orders/7", headers={"X-Forwarded-For": "8.8.8.8, 1.1.1.1"})).status == 429
        assert (await client.get("/orders/7", headers={"X-Forwarded-For": "2.2.2.2"})).status == 200

    _run(engine, go, settings)

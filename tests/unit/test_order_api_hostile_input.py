"""The traders' order API under hostile input: any path segment and any query string gets 200,
400 or 404 with a JSON body (never a 500), from a real server over a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session
from yarl import URL

from keepers.config.schema import OrderApiSettings
from keepers.obs.order_api import make_order_api
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.projection import store_events
from tests.helpers.order_events import OWNER, placed

CHAIN = 1
#: A small id, and the largest one SQLite's INTEGER column holds (one more cannot be stored).
STORED = (7, 2**63 - 1)


class Api:
    """A real server on a free port, driven from sync (hypothesis) tests on one event loop."""

    def __init__(self, loop: asyncio.Runner, runner: web.AppRunner, port: int) -> None:
        self.loop = loop
        self.runner = runner
        self.base = f"http://127.0.0.1:{port}"
        self.session: aiohttp.ClientSession | None = None

    def get(self, target: str) -> tuple[int, Any]:
        """GET `target` sent as is (already percent-encoded): status and the decoded JSON body."""

        async def go() -> tuple[int, Any]:
            if self.session is None:
                self.session = aiohttp.ClientSession()
            async with self.session.get(URL(self.base + target, encoded=True)) as resp:
                assert resp.content_type == "application/json", (target, resp.status, await resp.text())
                return resp.status, json.loads(await resp.text())

        return self.loop.run(go())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('api') / 's.sqlite'}")
    migrate(engine)
    with Session(engine) as s, s.begin():
        store_events(s, CHAIN, [placed(order_id, 10 + i) for i, order_id in enumerate(STORED)])

    unlimited = OrderApiSettings(rate_limit=1e9, burst=10**9)  # hypothesis sends hundreds at once

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(make_order_api(engine, CHAIN, unlimited))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    with asyncio.Runner() as loop:
        runner, port = loop.run(start())
        client = Api(loop, runner, port)
        try:
            yield client
        finally:
            if client.session is not None:
                loop.run(client.session.close())
            loop.run(runner.cleanup())
    engine.dispose()


def _encoded(text: str) -> str:
    return quote(text, safe="")


#: Raw characters a request target may carry unencoded, plus a bare '%' for broken escapes.
_RAW = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%"

segments = st.one_of(
    st.text(max_size=100).map(_encoded),  # any Unicode, properly encoded
    st.text(alphabet=_RAW, max_size=60),  # raw junk: '%G1', '%', '%C2' (half a UTF-8 sequence)...
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6).map(_encoded),
    st.integers(min_value=-(2**300), max_value=2**300).map(str).map(_encoded),
    st.integers(min_value=0, max_value=3_000).map(lambda n: "9" * n),
    st.sampled_from(["%C2%B2", "%00", "%2F", "..", ".", "1%2F2", "%EF%BC%91", "1_0", "%2B1"]),
)


@settings(max_examples=300, deadline=None)
@given(segment=segments)
def test_any_order_id_segment_is_answered_without_a_server_error(api: Api, segment: str) -> None:
    status, body = api.get(f"/orders/{segment}")
    assert status in (200, 400, 404), (segment, status, body)
    if status == 200:
        assert body["order_id"] in STORED
    else:
        assert isinstance(body["error"], str)
        assert len(body["error"]) < 200, "a short message, not the client's input back"


@settings(max_examples=200, deadline=None)
@given(order_id=st.one_of(st.integers(min_value=-(2**260), max_value=2**260), st.sampled_from(STORED)))
def test_an_integer_id_is_found_not_found_or_rejected_by_range(api: Api, order_id: int) -> None:
    status, _body = api.get(f"/orders/{order_id}")
    if order_id in STORED:
        assert status == 200
    elif 0 <= order_id < 2**256:
        assert status == 404, "a valid uint256 the store does not (or cannot) hold is not found"
    else:
        assert status == 400


queries = st.one_of(
    st.text(max_size=80).map(lambda owner: urlencode({"owner": owner})),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=40, max_size=40).map(
        lambda hex40: urlencode({"owner": "0x" + hex40})  # right length, wrong characters
    ),
    st.text(alphabet=_RAW + "=&", max_size=80),  # raw junk, repeated and empty keys
    st.just(""),
)


@settings(max_examples=300, deadline=None)
@given(query=queries)
def test_any_owner_query_is_answered_without_a_server_error(api: Api, query: str) -> None:
    status, body = api.get(f"/orders?{query}")
    assert status in (200, 400), (query, status, body)
    if status == 200:
        assert isinstance(body["orders"], list)
    else:
        assert body == {"error": "owner must be a 0x-prefixed 20-byte hex address"}


@pytest.mark.parametrize(
    ("segment", "status"),
    [
        ("%C2%B2", 400),  # superscript two: str.isdigit() says yes, int() says no
        ("%D9%A3", 400),  # Arabic-Indic three: int() reads it as 3
        ("%EF%BC%91", 400),  # fullwidth one
        ("9" * 30, 404),  # past SQLite's INTEGER: binding it raised OverflowError
        ("9" * 78, 400),  # 78 digits but not below 2**256
        ("1" + "0" * 76, 404),  # 77 digits, a valid uint256
        (str(2**256 - 1), 404),
        (str(2**256), 400),
        ("9" * 5_000, 400),  # int() refuses it (4,300 digits at most) with a ValueError
        ("-1", 400),
        ("0x10", 400),
        ("%201", 400),  # ' 1': int() strips spaces
        ("1%20", 400),
        ("1_0", 400),  # int() takes underscores
        ("%2B1", 400),  # '+1'
        ("", 404),  # /orders/: no such route, answered in JSON too
        ("7", 200),
        ("007", 200),
        (str(2**63 - 1), 200),
        (str(2**63), 404),
    ],
)
def test_hostile_order_ids(api: Api, segment: str, status: int) -> None:
    got, body = api.get(f"/orders/{segment}")
    assert got == status, body
    if status != 200:
        assert set(body) == {"error"}


@pytest.mark.parametrize(
    ("owner", "status"),
    [
        (OWNER, 200),
        (OWNER.upper().replace("0X", "0x"), 200),  # checksummed or upper case: the same owner
        ("0x" + "g" * 40, 400),
        ("0x" + "%D9%A3" * 40, 400),
        ("0x" + "aa" * 20 + "%00", 400),
        (OWNER[:-1], 400),
        ("aa" * 21, 400),
        ("", 400),
    ],
)
def test_hostile_owners(api: Api, owner: str, status: int) -> None:
    got, body = api.get(f"/orders?owner={owner}")
    assert got == status, body
    if status == 200:
        assert [o["order_id"] for o in body["orders"]] == sorted(STORED, reverse=True)
    else:
        assert set(body) == {"error"}

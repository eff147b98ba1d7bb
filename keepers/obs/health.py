"""/healthz (the process answers), /readyz (the keeper is caught up and its store reachable),
/metrics (Prometheus) and the traders' read-only order API (/orders/{id}, /orders?owner=0x...)
on one port."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine

from keepers.store.order_status import order_status, orders_of, parse_order_id

#: Returns (ready, reason).
ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _shown(raw: str) -> str:
    """A client's value, escaped and cut short, for an error message."""
    shown = ascii(raw)
    return shown if len(shown) <= 42 else shown[:41] + "'..."


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route, wrong method) as JSON too, like the API's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


def make_health_app(
    ready: ReadinessCheck, engine: Engine | None = None, chain_id: int | None = None
) -> web.Application:
    async def healthz(_req: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_req: web.Request) -> web.Response:
        ok, reason = await ready()
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def order(req: web.Request) -> web.Response:
        assert engine is not None
        assert chain_id is not None
        raw = req.match_info["order_id"]
        order_id = parse_order_id(raw)
        if order_id is None:
            return _error(400, f"order id must be a decimal integer below 2**256, got {_shown(raw)}")
        view = await anyio.to_thread.run_sync(order_status, engine, chain_id, order_id)
        if view is None:
            return _error(404, f"no order {order_id} on chain {chain_id} (not placed, or not synced yet)")
        return web.json_response(view.as_json())

    async def orders(req: web.Request) -> web.Response:
        assert engine is not None
        assert chain_id is not None
        owner = req.query.get("owner", "")
        if not _ADDRESS.fullmatch(owner):
            return _error(400, "owner must be a 0x-prefixed 20-byte hex address")
        views = await anyio.to_thread.run_sync(orders_of, engine, chain_id, owner)
        return web.json_response([v.as_json() for v in views])

    app = web.Application(middlewares=[_json_errors])
    if engine is not None and chain_id is not None:
        app.router.add_get("/orders/{order_id}", order)
        app.router.add_get("/orders", orders)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:  # noqa: S104 - pods serve probes on all interfaces
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

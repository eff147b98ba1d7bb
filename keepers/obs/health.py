"""/healthz (the process answers), /readyz (the keeper is caught up and its store reachable) and
/metrics (Prometheus) on one port. The traders' order API has a port of its own (order_api.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

#: Returns (ready, reason).
ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route, wrong method) as JSON too, like the API's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)


def make_health_app(ready: ReadinessCheck) -> web.Application:
    async def healthz(_req: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_req: web.Request) -> web.Response:
        ok, reason = await ready()
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:  # noqa: S104 - pods serve probes on all interfaces
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner serves on (the one the OS chose for port 0)."""
    return int(runner.addresses[0][1])

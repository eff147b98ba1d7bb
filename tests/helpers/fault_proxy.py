"""A JSON-RPC node that misbehaves on demand: an HTTP proxy of ours in front of a real node
(toxiproxy is not packaged here), switched between faults while a keeper uses it."""

from __future__ import annotations

import asyncio
import json
import threading
from types import TracebackType
from typing import Literal

import aiohttp
from aiohttp import web

from keepers_workshop.devnet.anvil import free_port

FORWARDED_HEADERS = {"content-type", "x-flashbots-signature"}

Mode = Literal[
    "pass",
    "latency",
    "429",
    "503",
    "garbage",
    "truncated",
    "drop",
    "stall",
    "behind",
    "refuse",
    "rpc-error",
    "no-batch",
]


class FaultProxy:
    def __init__(self, upstream: str, latency: float = 2.0) -> None:
        self.upstream = upstream
        self.latency = latency
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode: Mode = "pass"
        #: The contract and topic0 of the log mode "bad-logs" makes up (a followed event).
        self.bad_log_address = "0x" + "00" * 20
        self.bad_log_topic = "0x" + "00" * 32
        self.requests = 0
        self._frozen_head: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None

    def set(self, mode: Mode) -> None:
        """Switches the fault (refuse closes the listening socket; anything else reopens it)."""
        if mode == "behind" and self.mode != "behind":
            self._frozen_head = None
        self._call(self._listen(mode != "refuse"))
        self.mode = mode

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await self._listen(True)

    async def _listen(self, on: bool) -> None:
        assert self._runner is not None
        if on and self._site is None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()
        elif not on and self._site is not None:
            await self._site.stop()
            self._site = None

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        mode = self.mode
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "rpc-error":  # a JSON-RPC error for everything, the request not passed on
            return web.json_response(
                {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "internal"}}
            )
        if mode in ("429", "503"):
            return web.Response(status=int(mode), text="busy, try later")
        if mode in ("drop", "refuse"):  # refuse: a kept-alive connection dies too
            assert request.transport is not None
            request.transport.abort()  # the connection dies without an answer
            return web.Response()
        body = await request.read()
        if mode == "no-batch" and body.lstrip().startswith(b"["):  # as some providers answer a batch
            return web.json_response(
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": -32600, "message": "batch requests are not supported"},
                }
            )
        assert self._session is not None
        # A relay's signature header goes along: it signs exactly these body bytes.
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        async with self._session.post(self.upstream, data=body, headers=headers) as upstream:
            data = await upstream.read()
        if mode == "latency":
            await asyncio.sleep(self.latency)
        elif mode == "garbage":
            return web.Response(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        elif mode == "truncated":
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        elif mode == "behind":
            data = self._stale_head(body, data)
        elif mode == "bad-logs":
            data = self._bad_logs(body, data)
        return web.Response(body=data, content_type="application/json")

    def _bad_logs(self, body: bytes, data: bytes) -> bytes:
        """A node serving garbage logs: every eth_getLogs answer carries one more log, of
        `bad_log_address` under `bad_log_topic`, whose data that event's ABI cannot decode."""
        try:
            call, answer = json.loads(body), json.loads(data)
        except ValueError:
            return data
        if not (isinstance(call, dict) and call.get("method") == "eth_getLogs" and isinstance(answer, dict)):
            return data
        query = call["params"][0]
        answer["result"] = [
            *answer.get("result", []),
            {
                "address": self.bad_log_address, "topics": [self.bad_log_topic], "data": "0x12",
                "blockNumber": query["fromBlock"], "blockHash": "0x" + "00" * 32,
                "transactionHash": "0x" + "00" * 32, "logIndex": "0x0",
            },
        ]  # fmt: skip
        return json.dumps(answer).encode()

    def _stale_head(self, body: bytes, data: bytes) -> bytes:
        """A node that stopped following: eth_blockNumber keeps answering the same number."""
        try:
            call, answer = json.loads(body), json.loads(data)
        except ValueError:
            return data
        if isinstance(call, dict) and call.get("method") == "eth_blockNumber" and isinstance(answer, dict):
            self._frozen_head = self._frozen_head or answer.get("result")
            answer["result"] = self._frozen_head
            return json.dumps(answer).encode()
        return data


class TcpProxy:
    """A byte pipe in front of a node (for its WebSocket) that can fall silent: connections stay
    open, nothing more reaches the client, as when a subscription silently stops delivering."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.silent = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_client: bool) -> None:
            while data := await src.read(65536):
                if to_client and self.silent:
                    continue  # swallowed: the client keeps waiting on an open socket
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            up_writer.close()

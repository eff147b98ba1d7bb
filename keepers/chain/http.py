"""An async HTTP provider that owns its aiohttp session.

web3's AsyncHTTPProvider takes a process-wide threading lock through an executor on every
request, and a request cancelled while it waits for that lock leaves the lock held forever:
every HTTP provider in the process, sync ones included, then hangs (ethereum/web3.py #3867,
fix pending in #3872). Keepers cancel requests all the time (timeouts, task groups, shutdown),
so every async provider in this project is this one: one session per event loop, no lock.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
from web3 import AsyncHTTPProvider
from web3.types import RPCEndpoint, RPCResponse

from keepers import jsonfast

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30)


class HTTPStatusError(aiohttp.ClientError):
    """The node answered with an HTTP error status; the message names the host only."""


def redact(url: str) -> str:
    """scheme://host[:port] only: paths and queries often carry API keys."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}"


class SessionHTTPProvider(AsyncHTTPProvider):
    def __init__(self, endpoint_uri: str, request_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(endpoint_uri, exception_retry_configuration=None, **kwargs)
        self._timeout = aiohttp.ClientTimeout(total=request_timeout) if request_timeout else DEFAULT_TIMEOUT
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def _current_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session belongs to the loop that made it; a provider reused on a new loop
            # (tests, restarts) gets a new one.
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._session_loop = loop
        return self._session

    async def _post(self, request_data: bytes) -> bytes:
        session = self._current_session()
        async with session.post(
            str(self.endpoint_uri), data=request_data, headers=self.get_request_headers()
        ) as resp:
            if resp.status >= 400:
                # Not raise_for_status(): aiohttp's message carries the whole URL, API key and all.
                raise HTTPStatusError(
                    f"HTTP {resp.status} {resp.reason or ''} from {redact(str(self.endpoint_uri))}"
                )
            return await resp.read()

    @staticmethod
    def decode_rpc_response(raw_response: bytes) -> RPCResponse:
        # A page of logs is megabytes of JSON: orjson parses it several times faster.
        return cast(RPCResponse, jsonfast.loads(raw_response))

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        return await self._post(request_data)

    async def make_batch_request(self, batch_requests: list[tuple[RPCEndpoint, Any]]) -> Any:
        """The answers in the order of the requests, matched by id; a list that does not answer
        each id exactly once raises ValueError (a faulty endpoint: never an answer given to the
        wrong call). An answer that is not a list (one error object: batches refused) is
        returned as it is."""
        forms = [self.form_request(method, params) for method, params in batch_requests]
        body = b"[" + b",".join(self.encode_rpc_dict(f) for f in forms) + b"]"
        response = self.decode_rpc_response(await self._post(body))
        if not isinstance(response, list):
            return response
        ids = [f["id"] for f in forms]
        by_id = {r.get("id"): r for r in response if isinstance(r, dict) and isinstance(r.get("id"), int)}
        if len(response) != len(ids) or sorted(by_id) != sorted(ids):
            raise ValueError(f"a batch of {len(ids)} requests answered with other ids or a different count")
        return [by_id[i] for i in ids]

    async def disconnect(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

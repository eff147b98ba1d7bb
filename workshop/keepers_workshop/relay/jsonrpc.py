"""A minimal async JSON-RPC client (the relay's line to anvil)."""

from __future__ import annotations

from itertools import count
from typing import Any

import aiohttp


class RpcError(RuntimeError):
    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('message', error)}")
        self.method = method
        self.code = int(error.get("code", 0))
        self.data = error.get("data")


class JsonRpc:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self._ids = count(1)

    async def raw(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Forwards a request as is and returns the response as is (for proxying)."""
        async with self.session.post(self.url, json=payload) as resp:
            result: dict[str, Any] = await resp.json(content_type=None)
            return result

    async def raw_batch(self, payload: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Forwards a JSON-RPC batch as is."""
        async with self.session.post(self.url, json=payload) as resp:
            result: list[dict[str, Any]] = await resp.json(content_type=None)
            return result

    async def __call__(self, method: str, *params: Any) -> Any:
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        async with self.session.post(self.url, json=payload) as resp:
            body = await resp.json(content_type=None)
        if "error" in body:
            raise RpcError(method, body["error"])
        return body["result"]

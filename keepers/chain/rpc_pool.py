"""Several RPC endpoints behind one web3 provider: health, failover and per-endpoint rate limits.

`AsyncWeb3(RpcPool([...]))` works wherever a single provider would. Each request goes to the
healthiest endpoint with a free token: endpoints that fail repeatedly are taken out of rotation
for a growing cool-down (a circuit breaker), endpoints whose head lags the best one are used
last, and transport faults or rate-limit answers fail over to the next endpoint. Contract
errors (reverts) are answers, not faults: they are returned as they are.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiohttp
import anyio
import structlog
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from keepers.chain.http import SessionHTTPProvider, redact
from keepers.obs import metrics

log = structlog.get_logger("rpc")

#: JSON-RPC error codes that mean "this endpoint, not the request": rate limited, overloaded.
ENDPOINT_FAULT_CODES = frozenset({-32005, -32098, 429})


class AllEndpointsFailed(ConnectionError):
    """Every endpoint failed for one request; the message lists why (URLs without credentials)."""


class BatchRefused(RuntimeError):
    """An endpoint answered a JSON-RPC batch with one error: it does not take batches."""


_T = TypeVar("_T")


@dataclass
class _Bucket:
    rate: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = max(1.0, self.rate)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: int = 1) -> bool:
        """`n` requests' tokens once one is there: a batch counts each request it carries, as
        providers do, and may leave the bucket in debt (what follows waits it out), so a batch
        larger than the bucket is counted whole and never waits for tokens singles take first."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= n
            return True
        return False

    def wait_time(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


@dataclass
class Endpoint:
    index: int
    provider: SessionHTTPProvider
    bucket: _Bucket
    label: str
    failures: int = 0
    cooldown_until: float = 0.0
    head: int = 0
    requests: int = 0
    errors: int = 0

    @property
    def cooling(self) -> bool:
        return time.monotonic() < self.cooldown_until


#: Methods the keepers call; a plugin calling anything else through the reader is "other"
#: (a metric label must stay bounded whatever a plugin asks the node).
KNOWN_METHODS = frozenset({
    "eth_blockNumber", "eth_chainId", "eth_getBlockByNumber", "eth_getBlockByHash", "eth_getLogs", "eth_call",
    "eth_getTransactionReceipt", "eth_getTransactionCount", "eth_getTransactionByHash", "eth_estimateGas",
    "eth_feeHistory", "eth_gasPrice", "eth_maxPriorityFeePerGas", "eth_sendRawTransaction", "eth_getBalance",
    "eth_getCode", "eth_simulateV1",
})  # fmt: skip


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS or method == "batch" else "other"


def _endpoint_fault(error: object) -> bool:
    """A JSON-RPC error that is the endpoint's state (rate limited, overloaded), not the request's."""
    if not isinstance(error, dict):
        return False
    try:
        return int(error.get("code", 0)) in ENDPOINT_FAULT_CODES
    except (TypeError, ValueError):
        return False


def refuses_batches(error: object) -> bool:
    """An endpoint's one error for a whole batch that says it takes none (JSON-RPC's invalid
    request, or a message naming batches); any other is a fault of the endpoint."""
    if not isinstance(error, dict):
        return False
    return error.get("code") == -32600 or "batch" in str(error.get("message", "")).lower()


class RpcPool(AsyncJSONBaseProvider):
    def __init__(
        self,
        urls: Sequence[str],
        *,
        rate_limits: Sequence[float] | None = None,
        chain: str = "",
        max_head_lag: int = 3,
        failures_to_cool: int = 3,
        request_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("at least one RPC URL")
        rates = list(rate_limits or [50.0] * len(urls))
        self.chain = chain
        self.max_head_lag = max_head_lag
        self.failures_to_cool = failures_to_cool
        self.endpoints = [
            Endpoint(
                index=i,
                provider=SessionHTTPProvider(url, request_timeout=request_timeout),
                bucket=_Bucket(rates[i]),
                label=redact(url),
            )
            for i, url in enumerate(urls)
        ]  # fmt: skip
        for ep in self.endpoints:
            metrics.RPC_ENDPOINT_HEALTHY.labels(chain, str(ep.index)).set(1)
        #: web3's validation middleware asks for the chain id before every eth_call and
        #: eth_estimateGas; it cannot change under a running keeper (checked at start), so one
        #: answer serves them all and each call is one round trip instead of two.
        self._chain_id: RPCResponse | None = None

    def __str__(self) -> str:
        return f"RpcPool({', '.join(e.label for e in self.endpoints)})"

    def _order(self) -> list[Endpoint]:
        best_head = max(e.head for e in self.endpoints)

        def rank(e: Endpoint) -> tuple[int, int, int, int]:
            lagging = best_head - e.head > self.max_head_lag if e.head else False
            return (int(e.cooling), int(lagging), e.failures, e.index)

        return sorted(self.endpoints, key=rank)

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        if method == "eth_chainId" and self._chain_id is not None:
            return self._chain_id

        async def attempt(ep: Endpoint, reasons: list[str]) -> RPCResponse | None:
            return await self._try(ep, method, params, reasons)

        return await self._route(method, 1, attempt)

    async def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse]:
        """`requests` in one round trip to one endpoint, answers in their order; failed over
        whole, as one request is. An endpoint that does not take batches answers with one
        error object: that is returned as BatchRefused, not counted as the endpoint's fault."""

        async def attempt(ep: Endpoint, reasons: list[str]) -> list[RPCResponse] | None:
            return await self._try_batch(ep, requests, reasons)

        return await self._route("batch", len(requests), attempt)

    async def _route(
        self, what: str, cost: int, attempt: Callable[[Endpoint, list[str]], Awaitable[_T | None]]
    ) -> _T:
        """The first answer of the endpoints in order of health, each waited for its tokens."""
        reasons: list[str] = []
        for _round in range(2):
            for ep in self._order():
                if ep.cooling and _round == 0:
                    continue
                while not ep.bucket.take(cost):
                    # Prefer another endpoint with tokens over waiting for this one.
                    if any(
                        o is not ep and not o.cooling and o.bucket.wait_time() == 0 for o in self.endpoints
                    ):
                        break
                    await anyio.sleep(ep.bucket.wait_time())
                else:
                    response = await attempt(ep, reasons)
                    if response is not None:
                        return response
        raise AllEndpointsFailed(f"{what} failed on every endpoint: {'; '.join(reasons)}")

    async def _try(
        self, ep: Endpoint, method: RPCEndpoint, params: Any, reasons: list[str]
    ) -> RPCResponse | None:
        ep.requests += 1
        started = time.perf_counter()
        try:
            response = await ep.provider.make_request(method, params)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:  # ValueError: not JSON
            self._fault(ep, method, f"{ep.label}: {exc.__class__.__name__}")
            reasons.append(f"{ep.label}: {exc.__class__.__name__}")
            return None
        if not isinstance(response, dict) or ("result" not in response and "error" not in response):
            self._fault(ep, method, f"{ep.label}: not a JSON-RPC answer")
            reasons.append(f"{ep.label}: not a JSON-RPC answer")
            return None
        error = response.get("error")
        if isinstance(error, dict) and _endpoint_fault(error):
            self._fault(ep, method, f"{ep.label}: {error.get('message')}")
            reasons.append(f"{ep.label}: {error.get('code')}")
            return None
        metrics.RPC_SECONDS.labels(self.chain, method_label(method)).observe(time.perf_counter() - started)
        ep.failures = 0
        metrics.RPC_ENDPOINT_HEALTHY.labels(self.chain, str(ep.index)).set(1)
        if method == "eth_blockNumber" and isinstance(response.get("result"), str):
            ep.head = int(response["result"], 16)
        elif method == "eth_chainId" and "result" in response:
            self._chain_id = response
        return response

    async def _try_batch(
        self, ep: Endpoint, requests: list[tuple[RPCEndpoint, Any]], reasons: list[str]
    ) -> list[RPCResponse] | None:
        ep.requests += 1
        started = time.perf_counter()
        label = "batch"
        try:
            responses = await ep.provider.make_batch_request(requests)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:  # ValueError: not JSON, ids
            self._fault(ep, label, f"{ep.label}: {exc.__class__.__name__}")
            reasons.append(f"{ep.label}: {exc.__class__.__name__}")
            return None
        if isinstance(responses, dict) and refuses_batches(responses.get("error")):
            raise BatchRefused(f"{ep.label} refused a batch: {str(responses['error'].get('message'))[:200]}")
        if (
            not isinstance(responses, list)
            or len(responses) != len(requests)
            or not all(isinstance(r, dict) and ("result" in r or "error" in r) for r in responses)
        ):
            self._fault(ep, label, f"{ep.label}: not a JSON-RPC batch answer")
            reasons.append(f"{ep.label}: not a JSON-RPC batch answer")
            return None
        for r in responses:
            error = r.get("error")
            if _endpoint_fault(error):
                self._fault(ep, label, f"{ep.label}: {error.get('message')}")
                reasons.append(f"{ep.label}: {error.get('code')}")
                return None
        metrics.RPC_SECONDS.labels(self.chain, label).observe(time.perf_counter() - started)
        ep.failures = 0
        metrics.RPC_ENDPOINT_HEALTHY.labels(self.chain, str(ep.index)).set(1)
        return cast(list[RPCResponse], responses)

    def _fault(self, ep: Endpoint, method: str, reason: str) -> None:
        ep.errors += 1
        ep.failures += 1
        metrics.RPC_ERRORS.labels(self.chain, str(ep.index), method_label(method)).inc()
        if ep.failures >= self.failures_to_cool:
            ep.cooldown_until = time.monotonic() + min(60.0, 2.0 ** (ep.failures - self.failures_to_cool))
            metrics.RPC_ENDPOINT_HEALTHY.labels(self.chain, str(ep.index)).set(0)
        log.warning(
            "rpc endpoint fault", endpoint=ep.label, method=method, reason=reason, failures=ep.failures
        )

    async def disconnect(self) -> None:
        """Closes every endpoint's HTTP session."""
        for ep in self.endpoints:
            await ep.provider.disconnect()

    async def is_connected(self, show_traceback: bool = False) -> bool:
        for ep in self.endpoints:
            if await ep.provider.is_connected():
                return True
        return False

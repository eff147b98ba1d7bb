"""Read-only contract calls on the hot path, without web3's per-call machinery.

A web3 contract call looks its function up in the ABI (hashing every signature), validates and
encodes the arguments and runs the request through the middleware stack: about 2 ms of CPU per
call on our machines, which made the per-block market read the largest part of a keeper's
reaction. A `RawCall` is encoded once and decoded with eth_abi directly; a batch of them goes
out as one JSON-RPC batch through the same provider (so the RPC pool's failover and limits
still apply): one round trip, where a request per call cost each its own HTTP exchange in the
keeper and in every proxy on the way. A provider that refuses batches gets the calls
concurrently, one request each, from then on.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from eth_abi.abi import decode
from eth_utils.abi import get_abi_output_types
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.types import RPCEndpoint

from keepers.chain.http import SessionHTTPProvider
from keepers.chain.rpc_pool import BatchRefused, RpcPool, refuses_batches


class CallFailed(RuntimeError):
    """A read reverted or the node refused it."""


@dataclass(frozen=True)
class RawCall:
    to: str
    data: str
    output_types: tuple[str, ...]

    @classmethod
    def of(cls, contract: AsyncContract, fn: str, *args: Any) -> RawCall:
        """Encodes `contract.fn(*args)` once; reuse the result every block."""
        abi = contract.get_function_by_name(fn).abi
        return cls(
            str(contract.address), contract.encode_abi(fn, list(args)), tuple(get_abi_output_types(abi))
        )


#: Providers that answered a batch with one error: they get one request per call.
_NO_BATCHES: weakref.WeakSet[Any] = weakref.WeakSet()


async def call_all(w3: AsyncWeb3[Any], calls: Sequence[RawCall], block: int | str) -> list[tuple[Any, ...]]:
    """The decoded results of `calls` on `block`: one batch, or all requests in flight at once."""
    tag = hex(block) if isinstance(block, int) else block
    requests = [(RPCEndpoint("eth_call"), [{"to": c.to, "data": c.data}, tag]) for c in calls]
    provider = w3.provider
    if len(calls) > 1 and isinstance(provider, RpcPool | SessionHTTPProvider) and provider not in _NO_BATCHES:
        try:
            responses: Any = await provider.make_batch_request(requests)
        except BatchRefused:
            responses = None
        if isinstance(responses, list):
            return [_decoded(c, r) for c, r in zip(calls, responses, strict=True)]
        if responses is not None and not (
            isinstance(responses, dict) and refuses_batches(responses.get("error"))
        ):
            raise CallFailed(f"a batch of {len(calls)} eth_calls failed: {str(responses)[:200]}")
        _NO_BATCHES.add(provider)
    results: list[tuple[Any, ...] | None] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = _decoded(calls[i], await provider.make_request(*requests[i]))

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return [r for r in results if r is not None]


def _decoded(call: RawCall, response: Any) -> tuple[Any, ...]:
    if not isinstance(response, dict) or "error" in response or "result" not in response:
        error = response.get("error") if isinstance(response, dict) else response
        raise CallFailed(f"eth_call to {call.to} failed: {error}")
    raw = bytes.fromhex(str(response["result"]).removeprefix("0x"))
    return tuple(decode(list(call.output_types), raw))

"""The RPC pool in front of a real anvil and a dead endpoint."""

from __future__ import annotations

import anyio
import pytest
from web3 import AsyncWeb3

from keepers.chain.calls import RawCall, call_all
from keepers.chain.http import HTTPStatusError, SessionHTTPProvider, redact
from keepers.chain.rpc_pool import AllEndpointsFailed, RpcPool
from keepers_workshop.devnet.anvil import Anvil, free_port
from tests.helpers.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration


def test_fails_over_from_a_dead_endpoint_and_cools_it():
    with Anvil() as a:
        dead = f"http://127.0.0.1:{free_port()}"
        pool = RpcPool([dead, a.url], chain="t", failures_to_cool=1)
        w3 = AsyncWeb3(pool)

        async def go() -> list[int]:
            return [await w3.eth.block_number for _ in range(10)]

        assert anyio.run(go) == [0] * 10
        dead_ep, live_ep = pool.endpoints
        assert dead_ep.cooling, "the dead endpoint is out of rotation"
        assert dead_ep.requests == 1, "and was not tried again while cooling"
        assert live_ep.requests == 10


def test_rate_limit_spreads_a_burst_across_endpoints():
    with Anvil() as a:
        pool = RpcPool([a.url, a.url], rate_limits=[2, 1000], chain="t")
        w3 = AsyncWeb3(pool)

        async def go() -> None:
            for _ in range(30):
                await w3.eth.block_number

        anyio.run(go)
        slow, fast = pool.endpoints
        assert slow.requests <= 4, "the 2 req/s endpoint served only its burst (and refills)"
        assert slow.requests + fast.requests == 30


def test_contract_errors_are_answers_not_faults():
    with Anvil() as a:
        pool = RpcPool([a.url], chain="t")
        w3 = AsyncWeb3(pool)

        async def go() -> None:
            broke = "0x000000000000000000000000000000000000bEEF"
            with pytest.raises(Exception, match=r"[Ii]nsufficient funds"):
                await w3.eth.call({"from": broke, "to": broke, "value": 10**30})

        anyio.run(go)
        assert pool.endpoints[0].failures == 0


def test_all_dead_raises_with_redacted_urls():
    pool = RpcPool([f"http://127.0.0.1:{free_port()}/v3/SECRETKEY"], chain="t")

    async def go() -> None:
        await AsyncWeb3(pool).eth.block_number

    with pytest.raises(AllEndpointsFailed) as info:
        anyio.run(go)
    assert "SECRETKEY" not in str(info.value)
    assert redact("https://user:pw@rpc.example.net/v3/KEY?x=1") == "https://rpc.example.net"


def test_asks_for_the_chain_id_once_not_before_every_call():
    # web3's validation middleware wants the chain id before each eth_call: one answer serves all.
    with Anvil() as a:
        pool = RpcPool([a.url], chain="t")
        w3 = AsyncWeb3(pool)
        to = AsyncWeb3.to_checksum_address("0x" + "11" * 20)

        async def go() -> None:
            for _ in range(5):
                await w3.eth.call({"to": to, "data": "0x"})
            assert await w3.eth.chain_id == 31337

        anyio.run(go)
        assert pool.endpoints[0].requests == 6, "one eth_chainId and five eth_calls"


#: The identity precompile answers a call with its input: a view every fresh anvil has.
IDENTITY = "0x0000000000000000000000000000000000000004"


def _echo(n: int) -> RawCall:
    return RawCall(IDENTITY, "0x" + n.to_bytes(32, "big").hex(), ("uint256",))


def test_reads_go_out_as_one_batch_failed_over_whole():
    with Anvil() as a, FaultProxy(a.url) as busy:
        busy.set("503")
        pool = RpcPool([busy.url, a.url], chain="t")
        got = anyio.run(call_all, AsyncWeb3(pool), [_echo(n) for n in range(12)], "latest")
        assert got == [(n,) for n in range(12)]
        assert busy.requests == 1, "the faulty endpoint was asked once, for the whole batch"
        assert [ep.requests for ep in pool.endpoints] == [1, 1], "twelve reads, one request each"


def test_an_endpoint_that_refuses_batches_gets_one_request_per_call_from_then_on():
    with Anvil() as a, FaultProxy(a.url) as proxy:
        proxy.set("no-batch")
        pool = RpcPool([proxy.url], chain="t")
        w3 = AsyncWeb3(pool)
        calls = [_echo(n) for n in range(5)]
        assert anyio.run(call_all, w3, calls, "latest") == [(n,) for n in range(5)]
        assert proxy.requests == 1 + 5, "the refused batch, then a request per call"
        assert anyio.run(call_all, w3, calls, "latest") == [(n,) for n in range(5)]
        assert proxy.requests == 6 + 5, "no second batch"
        assert pool.endpoints[0].failures == 0, "a refused batch is no fault of the endpoint"


def test_an_http_error_names_the_host_only():
    """A provider used on its own (an isolated strategy's reader, replay) must not hand a
    strategy or a log an error text with the URL's API key in it, as aiohttp's own does."""
    with Anvil() as a, FaultProxy(a.url) as busy:
        busy.set("503")
        provider = SessionHTTPProvider(f"{busy.url}/v3/SECRETKEY")

        async def go() -> None:
            await AsyncWeb3(provider).eth.block_number

        with pytest.raises(HTTPStatusError) as info:
            anyio.run(go)
        assert "503" in str(info.value)
        assert busy.url in str(info.value)
        assert "SECRETKEY" not in str(info.value)

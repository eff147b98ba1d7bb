"""The RPC pool in front of a real anvil and a dead endpoint."""

from __future__ import annotations

import anyio
import pytest
from web3 import AsyncWeb3

from keepers.chain.rpc_pool import AllEndpointsFailed, RpcPool, redact
from keepers_workshop.devnet.anvil import Anvil, free_port

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

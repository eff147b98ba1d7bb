"""A relay URL carries credentials (a user part, an API key in the path). Whatever the relay
answers (HTTP errors whose aiohttp exception holds the request's URL and Authorization
header, JSON-RPC errors quoting the URL, a refused connection, garbage), the errors the
Flashbots client raises and the route logs name the relay as scheme://host only."""

from __future__ import annotations

import base64

import aiohttp
import anyio
import pytest
from eth_account import Account

from keepers.tx.flashbots import FlashbotsClient, RelayError, RelayUnavailable
from keepers.tx.routes import BundleRoute
from tests.helpers.fault_proxy import FaultProxy, Mode

pytestmark = pytest.mark.integration

PASSWORD, API_KEY = "re1ay-passw0rd", "APIKEY0relay4242"
SECRETS = (PASSWORD, API_KEY, base64.b64encode(f"keeper:{PASSWORD}".encode()).decode())


@pytest.mark.parametrize("mode", ["503", "429", "garbage", "truncated", "drop", "refuse", "rpc-error"])
def test_relay_errors_never_carry_the_urls_credentials(mode: Mode) -> None:
    with FaultProxy("http://127.0.0.1:9") as relay:  # nothing upstream: every mode fails alone
        relay.set(mode)
        url = relay.url.replace("http://", f"http://keeper:{PASSWORD}@") + f"/v3/{API_KEY}"

        async def attempt() -> list[str]:
            async with aiohttp.ClientSession() as session:
                client = FlashbotsClient(
                    [url], Account.create(), session, attempts=2, backoff=0.01, timeout=2
                )
                texts = []
                try:
                    await client.call_bundle([b"\x01"], 1)
                except (RelayError, RelayUnavailable) as exc:
                    texts.append(str(exc))
                sent = await BundleRoute(client).send([b"\x01"], 1, "uuid")
                return texts + list(sent.errors)

        texts = anyio.run(attempt)
    assert texts, "the relay failed: something says so"
    assert all("127.0.0.1" in t for t in texts), texts
    leaked = [s for s in SECRETS for t in texts if s in t]
    assert leaked == [], texts

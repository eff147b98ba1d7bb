"""The Flashbots relay protocol, client side, on aiohttp (web3.py 8 has no Flashbots module and
the `flashbots` package pins web3 < 7).

Every request body is serialised once; the X-Flashbots-Signature header signs exactly those
bytes: personal_sign over the text "0x" + hex(keccak256(body)) with the reputation key, which
is never the funds key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import aiohttp
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from keepers.chain.http import redact

SIGNATURE_HEADER = "X-Flashbots-Signature"
#: JSON-RPC error code relays use for a missing or bad signature.
BAD_SIGNATURE = -32025


def signature_header(body: bytes, account: LocalAccount) -> str:
    """`address:0xsignature` for exactly these body bytes."""
    digest_text = "0x" + keccak(body).hex()
    signed = account.sign_message(encode_defunct(text=digest_text))
    return f"{account.address}:{signed.signature.to_0x_hex()}"


def bundle_hash(raw_txs: Sequence[bytes]) -> str:
    """keccak256 of the concatenated transaction hashes, as relays compute it."""
    return "0x" + keccak(b"".join(keccak(tx) for tx in raw_txs)).hex()


def without_url(text: str, url: str) -> str:
    """`text` with `url`'s user part, path and query taken out: a relay's URL often carries an
    API key there, and error texts quote it."""
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpath = rest.rpartition("@")
    _, slash, path = hostpath.partition("/")
    for secret, shown in (
        (url, redact(url)),
        (f"{scheme}://{hostpath}", redact(url)),
        (hostpath, redact(url).partition("://")[2]),
        (f"/{path}" if slash and path else "", "/…"),
        (userinfo if at else "", "…"),
    ):
        if secret:
            text = text.replace(secret, shown)
    return text


def _fault(exc: BaseException, url: str) -> str:
    """What a relay call's failure was, without the request: aiohttp's response errors carry
    the request's URL and headers (the Authorization made from the URL's user part)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return without_url(f"HTTP {exc.status} {exc.message}"[:300], url)
    return without_url(f"{exc.__class__.__name__}: {exc}"[:300], url)


class RelayError(RuntimeError):
    """The relay answered with a JSON-RPC error."""

    def __init__(self, url: str, method: str, code: int, message: str) -> None:
        super().__init__(f"{method} at {redact(url)}: {code} {without_url(message, url)}")
        self.url, self.method, self.code, self.message = url, method, code, message


class RelayUnavailable(RuntimeError):
    """The relay could not be reached after retries."""


@dataclass(frozen=True)
class SimulatedTx:
    tx_hash: str
    gas_used: int
    error: str | None
    revert: str | None
    coinbase_diff: int


@dataclass(frozen=True)
class Simulation:
    """An eth_callBundle result."""

    bundle_hash: str
    bundle_gas_price: int
    coinbase_diff: int
    total_gas_used: int
    state_block: int
    results: list[SimulatedTx] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.results)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Simulation:
        return cls(
            bundle_hash=data["bundleHash"],
            bundle_gas_price=int(data["bundleGasPrice"]),
            coinbase_diff=int(data["coinbaseDiff"]),
            total_gas_used=int(data["totalGasUsed"]),
            state_block=int(data["stateBlockNumber"]),
            results=[
                SimulatedTx(
                    tx_hash=r["txHash"],
                    gas_used=int(r["gasUsed"]),
                    error=r.get("error"),
                    revert=r.get("revert"),
                    coinbase_diff=int(r["coinbaseDiff"]),
                )
                for r in data["results"]
            ],
        )


class FlashbotsClient:
    """Talks to one or more relays/builders; sends go to all of them."""

    def __init__(
        self,
        relays: Sequence[str],
        reputation: LocalAccount,
        session: aiohttp.ClientSession,
        *,
        attempts: int = 3,
        backoff: float = 0.2,
        timeout: float = 5.0,
    ) -> None:
        if not relays:
            raise ValueError("at least one relay URL")
        self.relays = list(relays)
        self.reputation = reputation
        self.session = session
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._ids = count(1)

    async def _rpc(self, url: str, method: str, params: list[Any]) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params},
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(body, self.reputation),
        }
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                async with self.session.post(url, data=body, headers=headers, timeout=self.timeout) as resp:
                    if resp.status >= 500:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, resp.history, status=resp.status, message=await resp.text()
                        )
                    payload = await resp.json(content_type=None)
                if not isinstance(payload, dict) or not ("result" in payload or "error" in payload):
                    raise ValueError(f"not a JSON-RPC answer: {str(payload)[:80]}")
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # ValueError: not JSON
                last = exc
                await asyncio.sleep(self.backoff * 2**attempt)
                continue
            if "error" in payload:
                err = (
                    payload["error"] if isinstance(payload["error"], dict) else {"message": payload["error"]}
                )
                raise RelayError(url, method, int(err.get("code", 0) or 0), str(err.get("message", "")))
            return payload["result"]
        fault = _fault(last, url) if last is not None else "no attempt"
        raise RelayUnavailable(f"{method} at {redact(url)}: {fault} after {self.attempts} attempts")

    async def call_bundle(
        self,
        txs: Sequence[bytes],
        block_number: int,
        state_block: int | str = "latest",
        timestamp: int | None = None,
    ) -> Simulation:
        """Simulates the bundle on the first relay (at `timestamp`, the target block's expected
        time, when given: what is due by time, TWAP slices, must be judged at that time)."""
        params: dict[str, Any] = {
            "txs": ["0x" + tx.hex() for tx in txs],
            "blockNumber": hex(block_number),
            "stateBlockNumber": state_block if isinstance(state_block, str) else hex(state_block),
        }
        if timestamp is not None:
            params["timestamp"] = timestamp
        answer = await self._rpc(self.relays[0], "eth_callBundle", [params])
        try:
            return Simulation.from_json(answer)
        except (KeyError, TypeError, ValueError) as exc:
            raise RelayUnavailable(
                f"eth_callBundle at {redact(self.relays[0])}: malformed result ({exc!r})"
            ) from None

    async def send_bundle(
        self,
        txs: Sequence[bytes],
        block_number: int,
        *,
        min_timestamp: int | None = None,
        max_timestamp: int | None = None,
        reverting_tx_hashes: Sequence[str] = (),
        replacement_uuid: str | None = None,
        builders: Sequence[str] = (),
    ) -> dict[str, str | Exception]:
        """Sends for one block to every relay; returns bundle hash or error per relay."""
        params: dict[str, Any] = {"txs": ["0x" + tx.hex() for tx in txs], "blockNumber": hex(block_number)}
        if min_timestamp:
            params["minTimestamp"] = min_timestamp
        if max_timestamp:
            params["maxTimestamp"] = max_timestamp
        if reverting_tx_hashes:
            params["revertingTxHashes"] = list(reverting_tx_hashes)
        if replacement_uuid:
            params["replacementUuid"] = replacement_uuid
        if builders:
            params["builders"] = list(builders)
        results = await asyncio.gather(
            *(self._rpc(url, "eth_sendBundle", [params]) for url in self.relays), return_exceptions=True
        )
        out: dict[str, str | Exception] = {}
        for url, res in zip(self.relays, results, strict=True):
            if isinstance(res, BaseException):
                out[url] = res if isinstance(res, Exception) else RuntimeError(repr(res))
            elif isinstance(res, dict) and isinstance(res.get("bundleHash"), str):
                out[url] = res["bundleHash"]
            else:
                out[url] = RelayUnavailable(
                    f"eth_sendBundle at {redact(url)}: malformed result {str(res)[:80]}"
                )
        return out

    async def cancel_bundle(self, replacement_uuid: str) -> None:
        await asyncio.gather(
            *(
                self._rpc(url, "eth_cancelBundle", [{"replacementUuid": replacement_uuid}])
                for url in self.relays
            ),
            return_exceptions=True,
        )

    async def send_private_transaction(
        self, tx: bytes, max_block_number: int, preferences: dict[str, Any] | None = None
    ) -> str:
        params: dict[str, Any] = {"tx": "0x" + tx.hex(), "maxBlockNumber": hex(max_block_number)}
        if preferences:
            params["preferences"] = preferences
        return str(await self._rpc(self.relays[0], "eth_sendPrivateTransaction", [params]))

    async def cancel_private_transaction(self, tx_hash: str) -> bool:
        return bool(await self._rpc(self.relays[0], "eth_cancelPrivateTransaction", [{"txHash": tx_hash}]))

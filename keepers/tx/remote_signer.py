"""A signer in another process, reached by URL and spoken to in the JSON-RPC that remote
signers already speak (`eth_accounts`, `eth_signTransaction`: Web3Signer answers the raw
transaction, Clef and geth an object holding it under `raw`). `unix:/path/to.sock` is our own
signer process (keepers/tx/signer_service.py); `http(s)://` is a remote one."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from keepers.store.tables import TxRecord
from keepers.tx.fees import Fees
from keepers.tx.signer import SignedTx, SignerError, tx_request

#: Seconds a signature may take: a signer that is not answering is a fault, not a wait.
TIMEOUT = 10.0


def split_signer_url(url: str) -> tuple[str, str | None]:
    """(HTTP URL to post to, Unix socket path or None)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        if not path:
            raise ValueError(f"signer URL {url!r}: unix: needs a socket path (unix:/run/signer.sock)")
        return "http://signer/", path
    if parts.scheme in ("http", "https") and parts.netloc:
        return url, None
    raise ValueError(f"signer URL {url!r}: use unix:/path/to.sock, http:// or https://")


class RemoteSigner:
    """The keeper's half: asks the signer for signatures, one JSON-RPC batch per call."""

    def __init__(self, url: str, chain_id: int) -> None:
        self.url = url
        self._post_url, self._socket = split_signer_url(url)
        self.chain_id = chain_id
        self.address = ""
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RemoteSigner({self.address or '?'} at {self.url}, chain {self.chain_id})"

    async def connect(self, expected: str | None = None) -> str:
        """Learns (and checks) the signing address: the signer must hold exactly one key."""
        accounts = await self._call([("eth_accounts", [])])
        found = accounts[0]
        if not isinstance(found, list) or len(found) != 1:
            raise SignerError(f"signer at {self.url} must hold exactly one account, has {found!r}")
        address = to_checksum_address(found[0])
        if expected is not None and address != to_checksum_address(expected):
            raise SignerError(f"signer at {self.url} signs for {address}, not {expected}")
        self.address = address
        return address

    async def sign(self, requests: Sequence[tuple[TxRecord, Fees]]) -> list[SignedTx]:
        if not requests:
            return []
        if not self.address:
            await self.connect()
        calls = [
            ("eth_signTransaction", [tx_request(rec, fees, self.chain_id, self.address)])
            for rec, fees in requests
        ]
        out = []
        for result, (_rec, fees) in zip(await self._call(calls), requests, strict=True):
            raw_hex = result.get("raw") if isinstance(result, dict) else result
            if not isinstance(raw_hex, str) or not raw_hex.startswith("0x"):
                raise SignerError(f"signer at {self.url} answered no raw transaction")
            raw = bytes.fromhex(raw_hex[2:])
            out.append(SignedTx(raw, "0x" + keccak(raw).hex(), fees))
        return out

    async def _call(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """One JSON-RPC batch; the results in the calls' order, or SignerError."""
        ids = [next(self._ids) for _ in calls]
        body = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        try:
            async with self._client().post(self._post_url, json=body) as resp:
                if resp.status != 200:
                    raise SignerError(f"signer at {self.url} answered HTTP {resp.status}")
                answers = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignerError(f"signer at {self.url} unreachable: {exc.__class__.__name__}") from None
        if isinstance(answers, dict):  # a signer that answers a batch with one error
            answers = [answers]
        if not isinstance(answers, list):
            raise SignerError(f"signer at {self.url} answered no JSON-RPC batch")
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        results = []
        for i in ids:
            answer = by_id.get(i)
            if answer is None:
                raise SignerError(f"signer at {self.url} left request {i} unanswered")
            if "error" in answer:
                error = answer["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                raise SignerError(f"signer at {self.url} refused: {message}")
            results.append(answer.get("result"))
        return results

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self._socket) if self._socket else None
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

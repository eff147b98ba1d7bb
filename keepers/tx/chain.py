"""What the transaction manager reads from the chain, in one small interface: the latest block,
receipts, canonical block hashes, a signer's nonce and balance, a gas estimate. The runtime
reads them over JSON-RPC (Web3Reads); the manager's state-machine test drives the manager
against a model chain through the same interface."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound
from web3.types import RPCEndpoint


@dataclass(frozen=True)
class Receipt:
    block_number: int
    block_hash: str  # lowercase 0x hex
    gas_used: int
    effective_gas_price: int


class ChainReads(Protocol):
    async def latest(self) -> tuple[int, int] | None:
        """The latest block's number and timestamp (None when the node has none to give)."""
        ...

    async def receipts(self, hashes: Iterable[str]) -> dict[str, Receipt]:
        """Receipts of the hashes that are mined (as the node sees it; check canonical())."""
        ...

    async def canonical(self, numbers: Iterable[int]) -> dict[int, str]:
        """The canonical block hash (lowercase) at each height."""
        ...

    async def nonce(self, address: str) -> int:
        """The address's mined transaction count."""
        ...

    async def balance(self, address: str) -> int: ...

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        """eth_estimateGas; raises what the node raises when the call would revert."""
        ...


class Web3Reads:
    """The reads over JSON-RPC, raw where web3's formatters cost more than the call."""

    def __init__(self, w3: AsyncWeb3[Any], concurrency: int = 16) -> None:
        self.w3 = w3
        self._limit = anyio.CapacityLimiter(concurrency)

    async def latest(self) -> tuple[int, int] | None:
        resp = await self.w3.provider.make_request(RPCEndpoint("eth_getBlockByNumber"), ["latest", False])
        block = resp.get("result")
        return (int(block["number"], 16), int(block["timestamp"], 16)) if block else None

    async def receipts(self, hashes: Iterable[str]) -> dict[str, Receipt]:
        out: dict[str, Receipt] = {}

        async def one(h: str) -> None:
            async with self._limit:
                try:
                    r = await self.w3.eth.get_transaction_receipt(h)  # type: ignore[arg-type]
                except TransactionNotFound:
                    return
            block_hash = r["blockHash"]
            text = block_hash.to_0x_hex() if hasattr(block_hash, "to_0x_hex") else str(block_hash)
            out[h] = Receipt(
                int(r["blockNumber"]), text.lower(), int(r["gasUsed"]), int(r.get("effectiveGasPrice", 0))
            )

        async with anyio.create_task_group() as tg:
            for h in set(hashes):
                tg.start_soon(one, h)
        return out

    async def canonical(self, numbers: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}

        async def one(n: int) -> None:
            async with self._limit:
                resp = await self.w3.provider.make_request(
                    RPCEndpoint("eth_getBlockByNumber"), [hex(n), False]
                )
            block = resp.get("result")
            if block:
                out[n] = str(block["hash"]).lower()

        async with anyio.create_task_group() as tg:
            for n in set(numbers):
                tg.start_soon(one, n)
        return out

    async def nonce(self, address: str) -> int:
        return int(await self.w3.eth.get_transaction_count(address, "latest"))  # type: ignore[arg-type]

    async def balance(self, address: str) -> int:
        return int(await self.w3.eth.get_balance(address))  # type: ignore[arg-type]

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        return int(await self.w3.eth.estimate_gas(tx))  # type: ignore[arg-type]

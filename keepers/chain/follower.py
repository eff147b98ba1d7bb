"""The chain follower: new heads (WebSocket subscription, HTTP polling as fallback), the
project's logs by block range, reorg handling, and a persisted cursor.

Each page of logs is applied in one database transaction together with the cursor and the
block hashes, so a crash leaves the store at a page boundary and a restart resumes there;
events are keyed by (tx hash, log index), so nothing is applied twice. Before each sync the
stored hash of the cursor block is compared with the chain's: on a mismatch the follower walks
back through its recent hashes to the fork point, rolls the store back to it and re-reads the
new branch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from web3 import AsyncWeb3, WebSocketProvider

from keepers.chain.events import Event, EventDecoder
from keepers.chain.events import to_hex as _hex
from keepers.obs import metrics
from keepers.store.engine import lock_chain_writes
from keepers.store.projection import rollback_after, store_events
from keepers.store.tables import BlockHash, Cursor

log = structlog.get_logger("follower")


class DeepReorg(RuntimeError):
    """The fork point is older than every kept block hash: the store cannot be trusted."""


@dataclass
class SyncResult:
    head: int
    applied: int
    rolled_back: int = 0
    fork_block: int | None = None


class ChainFollower:
    def __init__(
        self,
        w3: AsyncWeb3[Any],
        engine: Engine,
        chain_id: int,
        decoder: EventDecoder,
        *,
        name: str = "follower",
        chain_label: str = "",
        start_block: int = 0,
        page_size: int = 2000,
        keep_blocks: int = 128,
        confirmations: int = 0,
    ) -> None:
        self.w3 = w3
        self.engine = engine
        self.chain_id = chain_id
        self.decoder = decoder
        self.name = name
        self.label = chain_label or str(chain_id)
        self.start_block = start_block
        self.page_size = page_size
        self.keep_blocks = keep_blocks
        self.confirmations = confirmations

    # ------------------------------------------------------------------ state

    def cursor(self) -> tuple[int, str] | None:
        with Session(self.engine) as s:
            c = s.get(Cursor, (self.chain_id, self.name))
            return (c.block_number, c.block_hash) if c else None

    def _stored_hashes(self) -> list[BlockHash]:
        with Session(self.engine) as s:
            return list(
                s.exec(
                    select(BlockHash)
                    .where(BlockHash.chain_id == self.chain_id)
                    .order_by(col(BlockHash.number).desc())
                ).all()
            )

    # ------------------------------------------------------------------- sync

    async def sync(self) -> SyncResult:
        """Brings the store up to the current head (less `confirmations`)."""
        head = int(await self.w3.eth.block_number) - self.confirmations
        result = SyncResult(head=head, applied=0)
        metrics.HEAD.labels(self.label).set(head)
        cur = self.cursor()
        if cur is not None:
            fork = await self._fork_point(cur)
            if fork is not None:
                result.fork_block = fork
                result.rolled_back = await anyio.to_thread.run_sync(self._rollback, fork)
                metrics.REORGS.labels(self.label).inc()
                metrics.REORG_DEPTH.labels(self.label).observe(cur[0] - fork)
                log.warning("reorg", chain=self.label, fork_block=fork, depth=cur[0] - fork)
                cur = self.cursor()
        done = cur[0] if cur else self.start_block - 1
        while done < head:
            to = min(done + self.page_size, head)
            result.applied += await self._apply_range(done + 1, to, head)
            done = to
        metrics.BLOCKS_BEHIND.labels(self.label).set(max(0, head - done))
        return result

    async def _apply_range(self, start: int, end: int, head: int) -> int:
        logs = await self.w3.eth.get_logs(
            {
                "fromBlock": start,
                "toBlock": end,
                "address": [self.w3.to_checksum_address(a) for a in self.decoder.addresses],
            }
        )
        events = [e for e in (self.decoder.decode(dict(lg)) for lg in logs) if e is not None]
        # Hashes only where a reorg can still reach (near the head), plus the page's last block
        # for the cursor: a catch-up over old blocks costs one header per page.
        tail_from = max(start, head - self.keep_blocks + 1)
        numbers = range(tail_from, end + 1) if tail_from <= end else range(end, end + 1)
        headers = [await self.w3.eth.get_block(n) for n in numbers]
        if any(
            e.block_hash != _hex(h["hash"]) for h in headers for e in events if e.block_number == h["number"]
        ):
            raise _Retry("logs and headers disagree: the chain moved under us")
        return await anyio.to_thread.run_sync(self._commit, events, headers, end)

    def _commit(self, events: list[Event], headers: list[Any], end: int) -> int:
        with Session(self.engine) as s, s.begin():
            lock_chain_writes(s, self.chain_id)
            new = store_events(s, self.chain_id, events)
            for h in headers:
                s.merge(
                    BlockHash(
                        chain_id=self.chain_id,
                        number=int(h["number"]),
                        hash=_hex(h["hash"]),
                        parent_hash=_hex(h["parentHash"]),
                    )
                )
            s.merge(
                Cursor(
                    chain_id=self.chain_id,
                    name=self.name,
                    block_number=end,
                    block_hash=_hex(headers[-1]["hash"]),
                )
            )
            floor = end - self.keep_blocks
            for old in s.exec(
                select(BlockHash).where(BlockHash.chain_id == self.chain_id, BlockHash.number <= floor)
            ).all():
                s.delete(old)
        for e in events:
            metrics.EVENTS_APPLIED.labels(self.label, e.name).inc()
        return new

    async def _fork_point(self, cur: tuple[int, str]) -> int | None:
        """None if the cursor block is still canonical, else the highest block that is."""
        block = await self.w3.eth.get_block(cur[0])
        if _hex(block["hash"]) == cur[1]:
            return None
        for stored in self._stored_hashes():
            if stored.number >= cur[0]:
                continue
            canonical = await self.w3.eth.get_block(stored.number)
            if _hex(canonical["hash"]) == stored.hash:
                return stored.number
        raise DeepReorg(f"no kept block hash below {cur[0]} is canonical (kept {self.keep_blocks} blocks)")

    def _rollback(self, fork: int) -> int:
        contracts = self.decoder.by_address
        with Session(self.engine) as s, s.begin():
            lock_chain_writes(s, self.chain_id)
            removed = rollback_after(s, self.chain_id, fork, contracts)
            kept = s.get(BlockHash, (self.chain_id, fork))
            s.merge(
                Cursor(
                    chain_id=self.chain_id,
                    name=self.name,
                    block_number=fork,
                    block_hash=kept.hash if kept else "",
                )
            )
        return removed

    # ------------------------------------------------------------------ heads

    async def run(
        self,
        on_synced: Callable[[SyncResult], Awaitable[None]],
        *,
        ws_url: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        """Syncs on every new head until cancelled; WebSocket first, polling when it fails."""
        async for _head in self.heads(ws_url, poll_interval):
            try:
                result = await self.sync()
            except _Retry as exc:
                log.info("sync retried", reason=str(exc))
                continue
            await on_synced(result)

    async def heads(self, ws_url: str | None, poll_interval: float) -> AsyncIterator[int]:
        last = -1
        while True:
            if ws_url:
                try:
                    async for head in _ws_heads(ws_url):
                        if head > last:
                            last = head
                            yield head
                except (OSError, ConnectionError, TimeoutError) as exc:
                    log.warning("websocket heads failed; polling", error=str(exc))
            started = time.monotonic()
            # Poll until the WebSocket is worth retrying (30 s), or forever without one.
            while not ws_url or time.monotonic() - started < 30:
                head = int(await self.w3.eth.block_number)
                if head > last:
                    last = head
                    yield head
                await anyio.sleep(poll_interval)


class _Retry(RuntimeError):
    pass


async def _ws_heads(url: str) -> AsyncIterator[int]:
    async with AsyncWeb3(WebSocketProvider(url)) as ws:
        await ws.eth.subscribe("newHeads")
        async for message in ws.socket.process_subscriptions():
            # web3 yields the header as an AttributeDict: a Mapping, not a dict.
            result = message.get("result") if isinstance(message, Mapping) else None
            number = result.get("number") if isinstance(result, Mapping) else None
            if number is not None:
                yield int(number, 16) if isinstance(number, str) else int(number)

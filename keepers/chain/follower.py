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
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import structlog
from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select
from web3 import AsyncWeb3, WebSocketProvider
from web3.types import RPCEndpoint

from keepers.chain.events import Event, EventDecoder
from keepers.chain.events import to_hex as _hex
from keepers.obs import metrics
from keepers.store.bulk import insert_rows
from keepers.store.engine import lock_chain_writes
from keepers.store.projection import rollback_after, store_events
from keepers.store.tables import BlockHash, Cursor

log = structlog.get_logger("follower")


class LogsFailed(RuntimeError):
    """The node answered eth_getLogs with an error (the RPC pool already tried every endpoint)."""


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
        max_page_events: int = 10_000,
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
        self.max_page_events = max_page_events
        # The first page is short and pages double while they stay light: the density of a
        # chain's logs is unknown until read.
        self._span = min(page_size, 32)
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
        # Pipelined: the next page is fetched and decoded while this one is written (SQLite
        # and the node work outside the GIL). Pages shrink when they come back with more than
        # `max_page_events` (a long catch-up over dense blocks) and grow back when they thin.
        span = self._span
        page = await self._fetch(done + 1, min(done + span, head), head) if done < head else None
        while page is not None:
            span = self._next_span(span, len(page.events))
            end = page.end
            nxt = (end + 1, min(end + span, head)) if end < head else None
            box: dict[str, Any] = {}
            with _unwrapped():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._commit_into, box, page)
                    if nxt is not None:
                        tg.start_soon(self._fetch_into, box, nxt, head)
            result.applied += box["applied"]
            done = end
            page = box.get("page")
        self._span = span
        metrics.BLOCKS_BEHIND.labels(self.label).set(max(0, head - done))
        return result

    async def _commit_into(self, box: dict[str, Any], page: _Page) -> None:
        box["applied"] = await anyio.to_thread.run_sync(self._commit, page.events, page.headers, page.end)

    async def _fetch_into(self, box: dict[str, Any], blocks: tuple[int, int], head: int) -> None:
        box["page"] = await self._fetch(blocks[0], blocks[1], head)

    def _next_span(self, span: int, events: int) -> int:
        if events > self.max_page_events:
            return max(1, span // 2)
        if events < self.max_page_events // 4:
            return min(self.page_size, span * 2)
        return span

    async def _fetch(self, start: int, end: int, head: int) -> _Page:
        """The page start..end, or a shorter one from `start` when the node refuses or times
        out on this range (too many logs: nodes cap results, and a dense range is megabytes)."""
        while True:
            try:
                # The raw request: web3's result formatters cost more than decoding the logs.
                response = await self.w3.provider.make_request(
                    RPCEndpoint("eth_getLogs"),
                    [{"fromBlock": hex(start), "toBlock": hex(end), "address": self.decoder.addresses}],
                )
                if "error" in response:
                    raise LogsFailed(f"eth_getLogs {start}..{end} failed: {response['error']}")
                break
            except (LogsFailed, OSError, TimeoutError) as exc:
                if end == start:
                    raise
                end = start + (end - start) // 2
                log.warning("log range halved", chain=self.label, start=start, end=end, error=str(exc))
        events = [e for e in map(self.decoder.decode, response["result"]) if e is not None]
        # Hashes only where a reorg can still reach (near the head), plus the page's last block
        # for the cursor: a catch-up over old blocks costs one header per page.
        tail_from = max(start, head - self.keep_blocks + 1)
        numbers = range(tail_from, end + 1) if tail_from <= end else range(end, end + 1)
        headers = await self._headers(numbers)
        hashes = {h.number: h.hash for h in headers}
        if any(hashes.get(e.block_number, e.block_hash) != e.block_hash for e in events):
            raise _Retry("logs and headers disagree: the chain moved under us")
        return _Page(end, events, headers)

    async def _headers(self, numbers: range) -> list[_Header]:
        """Number, hash and parent of each block, fetched raw and concurrently (web3's
        get_block formats every field of the block: milliseconds each)."""
        out: list[_Header | None] = [None] * len(numbers)
        limit = anyio.CapacityLimiter(16)

        async def one(i: int, n: int) -> None:
            async with limit:
                response = await self.w3.provider.make_request(
                    RPCEndpoint("eth_getBlockByNumber"), [hex(n), False]
                )
            block = response.get("result")
            if not block:
                raise _Retry(f"block {n} is not there (yet): {response.get('error')}")
            out[i] = _Header(int(block["number"], 16), block["hash"], block["parentHash"])

        with _unwrapped():
            async with anyio.create_task_group() as tg:
                for i, n in enumerate(numbers):
                    tg.start_soon(one, i, n)
        return [h for h in out if h is not None]

    def _commit(self, events: list[Event], headers: list[_Header], end: int) -> int:
        with Session(self.engine) as s, s.begin():
            lock_chain_writes(s, self.chain_id)
            new = store_events(s, self.chain_id, events)
            s.exec(
                delete(BlockHash).where(
                    col(BlockHash.chain_id) == self.chain_id,
                    (col(BlockHash.number) <= end - self.keep_blocks)
                    | col(BlockHash.number).in_([h.number for h in headers]),
                )
            )
            insert_rows(
                s,
                BlockHash.__table__,  # type: ignore[attr-defined]
                [
                    {
                        "chain_id": self.chain_id,
                        "number": h.number,
                        "hash": h.hash,
                        "parent_hash": h.parent_hash,
                    }
                    for h in headers
                ],
            )
            s.merge(
                Cursor(chain_id=self.chain_id, name=self.name, block_number=end, block_hash=headers[-1].hash)
            )
        for name, count in Counter(e.name for e in events).items():
            metrics.EVENTS_APPLIED.labels(self.label, name).inc(count)
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


@contextmanager
def _unwrapped() -> Iterator[None]:
    """Re-raises a task group's failure as the exception itself when its tasks failed alike
    (several headers missing, say): callers catch _Retry and the RPC errors by type, and anyio
    wraps even a single one in an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len({type(e) for e in group.exceptions}) == 1:
            raise group.exceptions[0] from None
        raise


class _Header(NamedTuple):
    number: int
    hash: str
    parent_hash: str


class _Page(NamedTuple):
    end: int
    events: list[Event]
    headers: list[_Header]


async def _ws_heads(url: str) -> AsyncIterator[int]:
    async with AsyncWeb3(WebSocketProvider(url)) as ws:
        await ws.eth.subscribe("newHeads")
        async for message in ws.socket.process_subscriptions():
            # web3 yields the header as an AttributeDict: a Mapping, not a dict.
            result = message.get("result") if isinstance(message, Mapping) else None
            number = result.get("number") if isinstance(result, Mapping) else None
            if number is not None:
                yield int(number, 16) if isinstance(number, str) else int(number)

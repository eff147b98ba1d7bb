"""The chain follower: new heads (WebSocket subscription, HTTP polling as fallback), the
project's logs by block range, reorg handling, and a persisted cursor. `sync(n)` brings the
store up to block n and returns that `Block`.

Each page of logs is applied in one database transaction together with the cursor and the
block hashes, so a crash leaves the store at a page boundary and a restart resumes there;
events are keyed by (tx hash, log index), so nothing is applied twice. Each sync reads the
target block's header once; when it extends the cursor (its parent is the cursor block) there
is nothing more to check, the usual case at the head. Otherwise the cursor block's hash is
compared with the chain's: on a mismatch (or a chain now shorter than the cursor) the follower
walks back through its recent hashes to the fork point, rolls the store back to it and reads
the new branch.

Keeper kinds share one store, each following with its own cursor, and one may see a reorg after
the others have stored the new branch: its rollback removes their blocks too. Every commit
therefore checks, under the chain's write lock, the store's log of rollbacks (a follower whose
blocks were removed reads again from the fork, and its next Block says so) and the stored block
hashes (a page of another branch than the store's is not written; the store's recent blocks are
checked against the chain before the next read, and rolled back if they are not canonical).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
import structlog
from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select
from web3 import AsyncWeb3, WebSocketProvider
from web3.types import RPCEndpoint

from keepers.chain.block import Block, Header
from keepers.chain.events import Event, EventDecoder, MalformedLog
from keepers.obs import metrics
from keepers.store.bulk import insert_rows
from keepers.store.engine import lock_chain_writes
from keepers.store.projection import HASHES, Stored, rollback_after, rollbacks_since, store_events
from keepers.store.tables import BlockHash, Cursor

log = structlog.get_logger("follower")


class LogsFailed(RuntimeError):
    """The node answered eth_getLogs with an error (the RPC pool already tried every endpoint)."""


class DeepReorg(RuntimeError):
    """The fork point is older than every kept block hash: the store cannot be trusted."""


#: Most changed order rows a Block carries (a catch-up over many orders: read the store).
MAX_BLOCK_ORDERS = 10_000
#: Seconds between head polls at most while the node fails.
MAX_BACKOFF = 5.0


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
        self.head_seen_at = time.monotonic()
        metrics.HEAD_AGE.labels(self.label).set_function(self.head_age)
        # The first page is short and pages double while they stay light: the density of a
        # chain's logs is unknown until read.
        self._span = min(page_size, 32)
        self.keep_blocks = keep_blocks
        #: The store's cursor as this process last wrote or read it (None: not read yet).
        self._cursor: tuple[int, str] | None = None
        #: What the store went through since the last Block was returned (a sync that fails
        #: after a rollback or a stored page leaves it for the next one to report).
        self._pending = _Pending()
        #: The number of the last Block returned (-1: none yet).
        self._returned = -1
        #: The newest entry of the store's log of rollbacks this follower has acted on (None:
        #: not read yet).
        self._rollback_id: int | None = None
        #: Set when a commit found another branch in the store: the next sync checks the
        #: store's recent blocks against the chain first.
        self._audit = False

    # ------------------------------------------------------------------ state

    @property
    def applied_block(self) -> int:
        """The last block the store holds (as this process knows it), or the one before the start."""
        return self._cursor[0] if self._cursor else self.start_block - 1

    def cursor(self) -> tuple[int, str] | None:
        with Session(self.engine) as s:
            c = s.get(Cursor, (self.chain_id, self.name))
            return (c.block_number, c.block_hash) if c else None

    def _read_position(self) -> None:
        """The newest rollback, then the cursor: every rollback up to that one has moved the
        cursor back already (read the other way round, one committed in between would be
        taken as seen and the cursor read before it)."""
        with Session(self.engine) as s:
            self._rollback_id = rollbacks_since(s, self.chain_id, 0)[0]
        with Session(self.engine) as s:
            c = s.get(Cursor, (self.chain_id, self.name))
            self._cursor = (c.block_number, c.block_hash) if c else None

    def _follow_rollbacks(self) -> None:
        """Takes in rollbacks other followers made since the last look: a cursor above the
        fork moves back to it, and the next Block reports the fork (the keeper's view may
        hold rows of removed blocks even when its cursor is below them: rows another follower
        stored first). Looked at before the chain is searched for a fork: a follower whose
        cursor is on a replaced branch then reads from the fork instead of rolling back again."""
        with Session(self.engine) as s:
            self._take_rollbacks(s, self._rollback_id or 0)

    def _take_rollbacks(self, s: Session, since: int) -> int | None:
        """Rollbacks logged after `since`: the lowest fork among them (None if none), the
        cursor moved back to it when above it, and the fork pending for the next Block."""
        newest, lowest = rollbacks_since(s, self.chain_id, since)
        self._rollback_id = max(newest, self._rollback_id or 0)
        cur = self._cursor
        if lowest is None or cur is None:
            return lowest
        if lowest < cur[0]:
            kept = s.get(BlockHash, (self.chain_id, lowest))
            self._cursor = (lowest, kept.hash if kept else "")
            log.warning("store rolled back by another follower", chain=self.label, fork_block=lowest)
        self._pending.rolled_back_to(min(lowest, cur[0]), 0)
        return lowest

    def _stored_hashes(self) -> list[BlockHash]:
        with Session(self.engine) as s:
            return list(
                s.exec(
                    select(BlockHash)
                    .where(BlockHash.chain_id == self.chain_id)
                    .order_by(col(BlockHash.number).desc())
                ).all()
            )

    def _stored_hash(self, number: int) -> str | None:
        with Session(self.engine) as s:
            row = s.get(BlockHash, (self.chain_id, number))
            return row.hash if row else None

    # ------------------------------------------------------------------- sync

    async def head(self) -> int:
        return int(await self.w3.eth.block_number)

    async def sync(self, number: int | None = None) -> Block:
        """Brings the store up to block `number` (the head when None) and returns that block.
        Raises ChainMoved when the chain changed under the reads or a node answered from
        behind (try again at the next head); LogsFailed, OSError or TimeoutError on a node
        fault; DeepReorg when no kept block hash is canonical (the store cannot be trusted)."""
        tip = await self._header("latest" if number is None else hex(number))
        metrics.HEAD.labels(self.label).set(tip.number)
        if self._rollback_id is None or self._cursor is None:
            await anyio.to_thread.run_sync(self._read_position)
        if self._audit:
            await self._audit_store(tip)
        cur = self._cursor
        if cur is not None and cur not in ((tip.number - 1, tip.parent_hash), (tip.number, tip.hash)):
            # Not the next block: another follower may have rolled the store back already
            # (else the commit's check finds any rollback, without a read on every block).
            await anyio.to_thread.run_sync(self._follow_rollbacks)
            cur = self._cursor
        if cur is not None and cur not in ((tip.number - 1, tip.parent_hash), (tip.number, tip.hash)):
            if tip.number < cur[0] and self._stored_hash(tip.number) in (tip.hash, None):
                # A node behind us (an endpoint of the pool that lags), not a reorg; and a
                # shorter chain shows itself once it grows past a block we hold.
                raise ChainMoved(f"block {tip.number} is behind the cursor {cur[0]}: a node that lags")
            fork = await self._fork_point(cur, tip)
            if fork is None and cur[0] >= tip.number - 1:
                # The tip says the cursor block was replaced; the node asked says it was not.
                raise ChainMoved(f"nodes disagree on block {cur[0]}")
            if fork is not None:
                await self._roll_back(fork, "reorg")
        try:
            await self._read_to(tip)
        except _StoreMoved:
            # Another follower removed blocks this one had stored, or stored another branch
            # where this page goes: settle which branch is the chain's and read again, once
            # now (this tip is still the one to reach).
            if self._audit:
                await self._audit_store(tip)
            await self._read_to(tip)
        cur = self._cursor
        metrics.BLOCKS_BEHIND.labels(self.label).set(max(0, tip.number - (cur[0] if cur else tip.number)))
        p, self._pending = self._pending, _Pending()
        block = Block(
            tip.number, tip.hash, tip.timestamp, self._returned, p.applied, p.fork, p.rolled_back, p.orders
        )
        self._returned = tip.number
        return block

    async def _audit_store(self, tip: Header) -> None:
        store_fork = await self._store_fork_point(tip)
        if store_fork is not None:
            await self._roll_back(store_fork, "store held a replaced branch")
        self._audit = False

    async def _roll_back(self, fork: int, why: str) -> None:
        held = self._cursor[0] if self._cursor else fork
        fork, removed = await anyio.to_thread.run_sync(self._rollback, fork)
        self._pending.rolled_back_to(fork, removed)
        metrics.REORGS.labels(self.label).inc()
        metrics.REORG_DEPTH.labels(self.label).observe(max(0, held - fork))
        log.warning(why, chain=self.label, fork_block=fork, depth=max(0, held - fork))

    async def _read_to(self, tip: Header) -> None:
        """Reads and stores the blocks from the cursor up to `tip`, page by page."""
        cur = self._cursor
        done = cur[0] if cur else self.start_block - 1
        # Pipelined: the next page is fetched and decoded while this one is written (SQLite
        # and the node work outside the GIL). Pages shrink when they come back with more than
        # `max_page_events` (a long catch-up over dense blocks) and grow back when they thin.
        span = self._span
        head = tip.number
        page = await self._fetch(done + 1, min(done + span, head), tip) if done < head else None
        while page is not None:
            if (
                cur is not None
                and page.headers[0].number == cur[0] + 1
                and page.headers[0].parent_hash != cur[1]
            ):
                raise ChainMoved(f"block {cur[0] + 1} does not extend the cursor block")
            span = self._next_span(span, len(page.events))
            end = page.end
            nxt = (end + 1, min(end + span, head)) if end < head else None
            box: dict[str, Any] = {}
            with _unwrapped():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._commit_into, page)
                    if nxt is not None:
                        tg.start_soon(self._fetch_into, box, nxt, tip)
            cur = self._cursor
            page = box.get("page")
        self._span = span

    async def _commit_into(self, page: _Page) -> None:
        stored = await anyio.to_thread.run_sync(self._commit, page)
        # Reported by the next Block returned, whatever happens to the rest of this sync.
        self._pending.carry(stored)

    async def _fetch_into(self, box: dict[str, Any], blocks: tuple[int, int], tip: Header) -> None:
        box["page"] = await self._fetch(blocks[0], blocks[1], tip)

    def _next_span(self, span: int, events: int) -> int:
        if events > self.max_page_events:
            return max(1, span // 2)
        if events < self.max_page_events // 4:
            return min(self.page_size, span * 2)
        return span

    async def _fetch(self, start: int, end: int, tip: Header) -> _Page:
        """The page start..end, or a shorter one from `start` when the node refuses or times
        out on this range (too many logs: nodes cap results, and a dense range is megabytes)."""
        rollback_id = self._rollback_id or 0
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
        if not isinstance(response.get("result"), list):
            raise LogsFailed(f"eth_getLogs {start}..{end}: not a list of logs: {str(response)[:120]}")
        try:
            events = [e for e in map(self.decoder.decode, response["result"]) if e is not None]
        except (MalformedLog, TypeError) as exc:  # the node's garbage: retried as a failed read
            raise LogsFailed(f"eth_getLogs {start}..{end}: {exc}") from None
        # Hashes only where a reorg can still reach (near the head), plus the page's last block
        # for the cursor: a catch-up over old blocks costs one header per page.
        tail_from = max(start, tip.number - self.keep_blocks + 1)
        numbers = range(tail_from, end + 1) if tail_from <= end else range(end, end + 1)
        headers = await self._headers(numbers, tip)
        hashes = {h.number: h.hash for h in headers}
        if any(hashes.get(e.block_number, e.block_hash) != e.block_hash for e in events):
            raise ChainMoved("logs and headers disagree: the chain moved under us")
        return _Page(end, events, headers, rollback_id)

    async def _header(self, block: str) -> Header:
        """One header, raw (web3's get_block formats every field of the block: milliseconds)."""
        response = await self.w3.provider.make_request(RPCEndpoint("eth_getBlockByNumber"), [block, False])
        found = response.get("result")
        if not found:
            raise ChainMoved(f"block {block} is not there (yet): {response.get('error')}")
        return Header.from_json(found)

    async def _headers(self, numbers: range, tip: Header | None = None) -> list[Header]:
        """The headers of `numbers`, fetched concurrently (the tip's is already known)."""
        out: list[Header | None] = [None] * len(numbers)
        limit = anyio.CapacityLimiter(16)

        async def one(i: int, n: int) -> None:
            if tip is not None and n == tip.number:
                out[i] = tip
                return
            async with limit:
                out[i] = await self._header(hex(n))

        with _unwrapped():
            async with anyio.create_task_group() as tg:
                for i, n in enumerate(numbers):
                    tg.start_soon(one, i, n)
        return [h for h in out if h is not None]

    def _commit(self, page: _Page) -> Stored:
        events, headers, end = page.events, page.headers, page.end
        with Session(self.engine) as s, s.begin():
            lock_chain_writes(s, self.chain_id)
            self._check_store(s, page)
            stored = store_events(s, self.chain_id, events)
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
        self._cursor = (end, headers[-1].hash)
        for name, count in Counter(e.name for e in events).items():
            metrics.EVENTS_APPLIED.labels(self.label, name).inc(count)
        return stored

    def _check_store(self, s: Session, page: _Page) -> None:
        """Before a page is written on top of the cursor: the store still holds the cursor's
        block (no rollback by another follower removed it), no rollback since the page was
        read reached into it (it may be of the replaced branch), and the store holds no other
        branch where the page goes (one read before a reorg no one had rolled back yet)."""
        held = self._cursor
        lowest = self._take_rollbacks(s, page.rollback_id)
        if lowest is not None and held is not None and lowest < held[0]:
            raise _StoreMoved(f"the store was rolled back to block {lowest} by another follower")
        if lowest is not None and lowest < page.end:
            raise _StoreMoved(f"the store was rolled back to block {lowest} after this page was read")
        cur = self._cursor
        ours = {h.number: h.hash for h in page.headers}
        if cur is not None and cur[1]:
            ours[cur[0]] = cur[1]
        for number, stored_hash in s.execute(
            select(HASHES.c.number, HASHES.c.hash).where(
                HASHES.c.chain_id == self.chain_id, HASHES.c.number.between(min(ours), max(ours))
            )
        ):
            if ours.get(number, stored_hash) != stored_hash:
                self._audit = True
                raise _StoreMoved(f"the store holds another branch at block {number}")

    async def _store_fork_point(self, tip: Header) -> int | None:
        """None if the store's newest kept block at or below the tip is canonical, else the
        newest one that is. Blocks past this node's tip are not judged (a node that lags
        would take them for a replaced branch): they are built on the ones below."""
        judged = [h for h in self._stored_hashes() if h.number <= tip.number]
        for i, stored in enumerate(judged):
            if await self._canonical(stored.number, stored.hash, tip):
                return None if i == 0 else stored.number
        if not judged:
            return None
        raise DeepReorg(f"no kept block hash is canonical (kept {self.keep_blocks} blocks)")

    async def _fork_point(self, cur: tuple[int, str], tip: Header) -> int | None:
        """None if the cursor block is still canonical, else the highest kept block that is.
        A block above the tip is not (a rollback to a shorter chain); a block at or below it
        that a node does not return raises ChainMoved (that node lags: ask again later), so
        only real hash mismatches walk further back."""
        if await self._canonical(cur[0], cur[1], tip):
            return None
        for stored in self._stored_hashes():
            if stored.number < cur[0] and await self._canonical(stored.number, stored.hash, tip):
                return stored.number
        raise DeepReorg(f"no kept block hash below {cur[0]} is canonical (kept {self.keep_blocks} blocks)")

    async def _canonical(self, number: int, block_hash: str, tip: Header) -> bool:
        if number > tip.number:
            return False
        if number == tip.number:
            return tip.hash == block_hash
        return (await self._header(hex(number))).hash == block_hash

    def _rollback(self, fork: int) -> tuple[int, int]:
        """Rolls the store back to `fork`, or further if another follower already did (what
        was stored above that since may be of either branch). Returns the fork and the events
        removed."""
        contracts = self.decoder.by_address
        with Session(self.engine) as s, s.begin():
            lock_chain_writes(s, self.chain_id)
            _, lowest = rollbacks_since(s, self.chain_id, self._rollback_id or 0)
            fork = fork if lowest is None else min(fork, lowest)
            done = rollback_after(s, self.chain_id, fork, contracts)
            kept = s.get(BlockHash, (self.chain_id, fork))
            kept_hash = kept.hash if kept else ""
            s.merge(Cursor(chain_id=self.chain_id, name=self.name, block_number=fork, block_hash=kept_hash))
        self._cursor = (fork, kept_hash)
        self._rollback_id = done.rollback_id
        return fork, done.removed

    # ------------------------------------------------------------------ heads

    async def heads(
        self, ws_url: str | None, poll_interval: float, block_time: float | None = None
    ) -> AsyncIterator[int]:
        """New head numbers, rising: WebSocket first, polling when it fails or falls silent.
        A node that refuses, stalls or answers garbage is waited out with backoff: the keeper
        never exits because its RPC did (the head's age shows it, and readiness drops). A
        consumer that spent over a block (`block_time`, else a poll interval) on one head gets
        the chain's head next, not the heads buffered meanwhile."""
        slow_after = block_time or poll_interval
        last = -1
        silence = max(20 * poll_interval, 10.0)  # a subscription quiet this long is broken
        while True:
            if ws_url:
                try:
                    slow = False
                    async for head in _ws_heads(ws_url, silence):
                        if head <= last:
                            continue
                        if slow:
                            # The consumer took long on the last head: the heads buffered since
                            # are old news. Skip to the chain's head (the others are then
                            # passed over), as polling would, rather than work through the
                            # backlog a block late at every step.
                            with suppress(Exception):
                                head = max(head, await self.head())
                        last = head
                        self._new_head()
                        handed_at = time.monotonic()
                        yield head
                        slow = time.monotonic() - handed_at > slow_after
                except Exception as exc:  # noqa: BLE001 - any fault of the subscription: poll
                    log.warning("websocket heads failed; polling", error=_fault(exc), chain=self.label)
            started = time.monotonic()
            failures = 0
            # Poll until the WebSocket is worth retrying (30 s), or forever without one.
            while not ws_url or time.monotonic() - started < 30:
                try:
                    head = await self.head()
                except Exception as exc:  # noqa: BLE001 - the node's fault, never the keeper's end
                    failures += 1
                    wait = min(poll_interval * 2 ** min(failures, 16), MAX_BACKOFF)
                    metrics.HEAD_POLL_FAILURES.labels(self.label).inc()
                    log.warning("head poll failed; backing off", error=_fault(exc), retry_in=round(wait, 2),
                                failures=failures, chain=self.label)  # fmt: skip
                    await anyio.sleep(wait)
                    continue
                failures = 0
                if head > last:
                    last = head
                    self._new_head()
                    yield head
                await anyio.sleep(poll_interval)

    def _new_head(self) -> None:
        self.head_seen_at = time.monotonic()

    def head_age(self) -> float:
        """Seconds since a new head arrived (since start, before the first)."""
        return time.monotonic() - self.head_seen_at


def _fault(exc: BaseException) -> str:
    """What failed, short and without URLs' credentials (the pool's messages are redacted)."""
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"


class ChainMoved(RuntimeError):
    """The chain changed while a sync read it (a reorg, a lagging node): try at the next head."""


class _StoreMoved(ChainMoved):
    """Another follower rolled the shared store back below this one's cursor (now moved
    there), or stored another branch where this one's page goes (`_audit` set)."""


@contextmanager
def _unwrapped() -> Iterator[None]:
    """Re-raises a task group's failure as the exception itself when its tasks failed alike
    (several headers missing, say): callers catch ChainMoved and the RPC errors by type, and anyio
    wraps even a single one in an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = group.exceptions
        if len({type(e) for e in errors}) == 1:
            raise errors[0] from None
        # A page's commit and the next page's fetch can both find the chain moved (a reorg
        # seen by both): the commit's finding says more (the store moved; retry at once).
        if all(isinstance(e, ChainMoved) for e in errors):
            raise next((e for e in errors if isinstance(e, _StoreMoved)), errors[0]) from None
        raise


@dataclass
class _Pending:
    applied: int = 0
    fork: int | None = None
    rolled_back: int = 0
    orders: dict[int, dict[str, Any]] | None = field(default_factory=dict)

    def carry(self, stored: Stored) -> None:
        self.applied += stored.new
        if self.orders is not None:
            self.orders.update(stored.orders)
            if len(self.orders) > MAX_BLOCK_ORDERS:
                self.orders = None

    def rolled_back_to(self, fork: int, removed: int) -> None:
        self.fork = fork if self.fork is None else min(self.fork, fork)
        self.rolled_back += removed
        self.orders = {}  # rows from before the rollback describe a branch that is gone


class _Page(NamedTuple):
    end: int
    events: list[Event]
    headers: list[Header]
    #: The newest store rollback the follower knew of when the page's read began.
    rollback_id: int


async def _ws_heads(url: str, silence: float) -> AsyncIterator[int]:
    """Head numbers from a newHeads subscription; TimeoutError after `silence` seconds without one
    (a socket can stay open and deliver nothing)."""
    async with AsyncExitStack() as stack:
        with anyio.fail_after(silence):  # a node can also fall silent while connecting
            ws = await stack.enter_async_context(AsyncWeb3(WebSocketProvider(url)))
            await ws.eth.subscribe("newHeads")
        messages = ws.socket.process_subscriptions().__aiter__()
        while True:
            with anyio.fail_after(silence):
                message = await messages.__anext__()
            # web3 yields the header as an AttributeDict: a Mapping, not a dict.
            result = message.get("result") if isinstance(message, Mapping) else None
            number = result.get("number") if isinstance(result, Mapping) else None
            if number is not None:
                yield int(number, 16) if isinstance(number, str) else int(number)

"""The keeper's collector: new heads in, `Block`s out, each applied to the store before it is
handed on. `heads()` and `block(n)` are separate so a consumer can do its own work per head
(the keeper loop settles its transactions at every head, even one whose sync failed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from keepers.chain.block import Block
from keepers.chain.follower import ChainFollower, ChainMoved, LogsFailed
from keepers.obs import metrics

log = structlog.get_logger("follower")


class BlockSource:
    def __init__(
        self,
        follower: ChainFollower,
        *,
        ws_url: str | None = None,
        poll_interval: float = 1.0,
        block_time: float | None = None,
    ) -> None:
        self.follower = follower
        self.ws_url = ws_url
        self.poll_interval = poll_interval
        self.block_time = block_time

    def heads(self) -> AsyncIterator[int]:
        """New head numbers, rising (WebSocket subscription, HTTP polling as fallback)."""
        return self.follower.heads(self.ws_url, self.poll_interval, self.block_time)

    async def block(self, number: int) -> Block | None:
        """Block `number`, the store brought up to it; None when the chain moved under the
        reads or the node failed them (the next head retries; the store is at a page
        boundary). A reorg deeper than the kept hashes raises: the store cannot be trusted."""
        try:
            return await self.follower.sync(number)
        except ChainMoved as exc:
            log.info("sync retried", reason=str(exc))
        except (LogsFailed, OSError, TimeoutError) as exc:  # the RPC pool's faults included
            log.warning("sync failed; retrying at the next head", block=number, error=str(exc))
            # Behind by what could not be read: a node that keeps failing the same read (garbage
            # logs) shows as a keeper falling behind (alert, readiness), not as a quiet stall.
            cursor = self.follower.cursor()
            metrics.BLOCKS_BEHIND.labels(self.follower.label).set(
                max(0, number - (cursor[0] if cursor else 0))
            )
        return None

    async def __aiter__(self) -> AsyncIterator[Block]:
        async for number in self.heads():
            block = await self.block(number)
            if block is not None:
                yield block

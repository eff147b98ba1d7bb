"""twap: every due slice of every TWAP order in one transaction per block.

A slice is due when the next block's timestamp reaches the order's notBefore. The schedule is
the chain's clock (block timestamps), read from the contract, not a wall-clock scheduler: a
wall-clock timer fires early or late relative to blocks, the contract would skip an early slice
(NotDue) and the gas would be wasted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from keepers.sdk import (
    Action,
    BlockContext,
    OrderView,
    Strategy,
    batch_action,
    checksum,
    load_artifact,
    plan_groups,
)


class TwapParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    native_token: str | None = None
    #: Seconds the next block is expected after this one (blocks on the devnet: 1).
    block_time: int = 1


def slice_size(remaining: int, slices_left: int) -> int:
    """The contract's slice: what is left over the slices left (the last takes all), so the
    order runs exactly its slice count."""
    return remaining // slices_left if slices_left > 1 else remaining


class OnSchedule(Strategy[TwapParams]):
    kind = "twap"
    Params = TwapParams

    async def _schedule(self, ctx: BlockContext, order_id: int) -> tuple[int, int, int]:
        assert ctx.reader is not None
        book: Any = ctx.reader.eth.contract(
            address=checksum(ctx.contracts["order_book"]), abi=load_artifact("OrderBook").abi
        )
        o = await book.functions.getOrder(order_id).call(block_identifier=ctx.number)
        return int(o[1]), int(o[9]), int(o[11])  # remaining, notBefore, slices left

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, book = ctx.market, ctx.contracts.get("order_book")
        if snap is None or book is None or ctx.reader is None:
            return []
        due: dict[int, list[tuple[OrderView, int]]] = defaultdict(list)
        for order in ctx.candidates:
            remaining, next_at, left = await self._schedule(ctx, order.order_id)
            if remaining and next_at <= ctx.timestamp + self.params.block_time:
                due[order.market].append((order, slice_size(remaining, left)))
        groups = plan_groups(snap, due)
        # TWAP amounts are fixed by the contract; send none so it applies its own slice.
        groups = [g.__class__(**{**g.__dict__, "amounts": ()}) for g in groups]
        action = batch_action(
            f"twap:{ctx.chain_id}:{ctx.number}",
            book,
            groups,
            snap,
            ctx.keeper_address,
            self.params.native_token,
        )
        return [action] if action else []

"""iceberg: the largest clip of each iceberg order that still meets its limit (and its fairness
tolerance of the oracle) at the current price impact, so no clip moves the pool past the
order's own bounds. The contract takes at most one clip of an order per block."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from keepers.sdk import (
    Action,
    BlockContext,
    MarketSnapshot,
    OrderView,
    Strategy,
    batch_action,
    is_fair,
    meets_limit,
    plan_groups,
    tolerance_of,
)


class IcebergParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    native_token: str | None = None
    #: Smallest clip worth a fill, as a share of the order's clip size (bps).
    min_clip_bps: int = 100


def clip_size(snap: MarketSnapshot, order: OrderView) -> int:
    """Largest amount <= min(clip, remaining) whose exact quote meets the limit and the
    tolerance (binary search: output per input falls as the amount grows, so the feasible
    amounts are a prefix)."""
    token_in, token_out = snap.markets[order.market]
    hi = min(order.trigger_or_clip, order.remaining)
    tolerance = [tolerance_of(snap, order)]

    def ok(amount: int) -> bool:
        route = snap.best_route(token_in, token_out, amount)
        return (
            route is not None
            and meets_limit(order, amount, route.amount_out)
            and is_fair(snap, order.market, amount, route.amount_out, tolerance)
        )

    if hi <= 0:
        return 0
    if ok(hi):
        return hi
    lo, hi = 0, hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


class ImpactBounded(Strategy[IcebergParams]):
    kind = "iceberg"
    Params = IcebergParams

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, book = ctx.market, ctx.contracts.get("order_book")
        if snap is None or book is None:
            return []
        by_market: dict[int, list[tuple[OrderView, int]]] = defaultdict(list)
        for order in ctx.candidates:
            if order.market not in snap.markets:
                continue
            size = clip_size(snap, order)
            if size * 10_000 >= order.trigger_or_clip * self.params.min_clip_bps or size == order.remaining:
                by_market[order.market].append((order, size))
        groups = plan_groups(snap, by_market)
        action = batch_action(
            f"iceberg:{ctx.chain_id}:{ctx.number}",
            book,
            groups,
            snap,
            ctx.keeper_address,
            self.params.native_token,
        )
        return [action] if action else []

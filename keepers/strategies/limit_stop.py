"""limit-stop strategies: limit, stop-loss and take-profit orders crossed this block (from the
trigger index), batched per market into one transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

from pydantic import Field

from keepers.sdk import (
    Action,
    BidParams,
    BlockContext,
    OrderView,
    PlannedGroup,
    Strategy,
    batch_action,
    plan_groups,
    with_bid,
)


class LimitStopParams(BidParams):
    #: Address of the wrapped native token, to value fees in wei (the devnet's WETH).
    native_token: str | None = None
    #: Most orders in one transaction.
    max_orders: int = Field(default=40, ge=1, le=500)


_P = TypeVar("_P", bound=LimitStopParams)


class CrossedOrders(Strategy[_P]):
    """Fills the crossed orders `select` picks at the best route (direct or two-hop) for the batch."""

    kind = "limit-stop"

    def select(self, orders: Sequence[OrderView]) -> list[OrderView]:
        return sorted(orders, key=lambda o: o.order_id)[: self.params.max_orders]

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, book = ctx.market, ctx.contracts.get("order_book")
        if snap is None or book is None or not ctx.candidates:
            return []
        by_market: dict[int, list[tuple[OrderView, int]]] = defaultdict(list)
        for o in self.select(ctx.candidates):
            by_market[o.market].append((o, o.remaining))
        groups = plan_groups(snap, by_market)
        action = batch_action(
            f"limit-stop:{ctx.chain_id}:{ctx.number}",
            book,
            groups,
            snap,
            ctx.keeper_address,
            self.params.native_token,
        )
        return [with_bid(action, self.params)] if action else []


class BestExecution(CrossedOrders[LimitStopParams]):
    """Fills every crossed order at the best route (direct or two-hop) for the batch."""

    Params = LimitStopParams


class FeeMaxParams(LimitStopParams):
    #: Orders paying less than this keeper fee are left to others.
    min_fee_bps: int = Field(default=5, ge=0, le=100)


class FeeMaximising(CrossedOrders[FeeMaxParams]):
    """Takes the best-paying crossed orders first and skips those below a minimum fee."""

    Params = FeeMaxParams

    def select(self, orders: Sequence[OrderView]) -> list[OrderView]:
        paying = [o for o in orders if o.keeper_fee_bps >= self.params.min_fee_bps]
        return sorted(paying, key=lambda o: (-o.keeper_fee_bps, o.order_id))[: self.params.max_orders]


__all__ = ["BestExecution", "CrossedOrders", "FeeMaximising", "PlannedGroup"]

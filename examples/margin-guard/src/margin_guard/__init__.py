"""margin-guard: fill crossed limit/stop orders only when the fees pay for the gas, with a margin."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from keepers.sdk import Action, BlockContext, OrderView, Strategy, batch_action, plan_groups

__all__ = ["MarginGuard", "MarginParams"]


class MarginParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Fees earned must be at least this many times the gas cost at the current gas price.
    min_margin: float = Field(default=1.5, ge=0)
    #: The wrapped native token, to value fees in wei.
    native_token: str | None = None


class MarginGuard(Strategy[MarginParams]):
    kind = "limit-stop"
    Params = MarginParams

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, book = ctx.market, ctx.contracts.get("order_book")
        if snap is None or book is None or not ctx.candidates or ctx.reader is None:
            return []
        by_market: dict[int, list[tuple[OrderView, int]]] = defaultdict(list)
        for order in ctx.candidates:
            by_market[order.market].append((order, order.remaining))
        groups = plan_groups(snap, by_market)
        action = batch_action(
            f"margin-guard:{ctx.chain_id}:{ctx.number}", book, groups, snap, ctx.keeper_address,
            self.params.native_token,
        )  # fmt: skip
        if action is None:
            return []
        gas_price = int(await ctx.reader.eth.gas_price)
        gas_cost = sum(c.gas_limit for c in action.calls) * gas_price
        if action.expected_value_wei < self.params.min_margin * gas_cost:
            return []
        return [action]

"""Planning OrderBook fills off-chain with the contract's own rules, so what a strategy sends
is what the contract will accept: one shared swap per market, orders whose limit the aggregate
price misses dropped, then one re-quote (a smaller aggregate only improves the price)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keepers.engine.market import MarketSnapshot
from keepers.store.tables import Order
from keepers.tx.actions import Action, Call
from strategies.common import calldata, checksum, usd_to_wei

BPS = 10_000
GAS_BASE, GAS_PER_ORDER, GAS_PER_GROUP = 130_000, 40_000, 70_000


def meets_limit(order: Order, fill_in: int, out: int) -> bool:
    net = out - out * order.keeper_fee_bps // BPS
    return net * order.amount_in >= fill_in * order.min_amount_out


@dataclass(frozen=True)
class PlannedGroup:
    market: int
    path: tuple[str, ...]
    order_ids: tuple[int, ...]
    amounts: tuple[int, ...]
    keeper_fee_out: int  # in the market's output token
    token_out: str

    def as_abi(self) -> tuple[int, list[str], list[int], list[int]]:
        return (self.market, [checksum(p) for p in self.path], list(self.order_ids), list(self.amounts))


def plan_group(snap: MarketSnapshot, market: int, items: Sequence[tuple[Order, int]]) -> PlannedGroup | None:
    """The fillable part of `items` (order, input amount) as one group, or None."""
    if market not in snap.markets:
        return None
    token_in, token_out = snap.markets[market]
    chosen = sorted((it for it in items if it[1] > 0), key=lambda it: it[0].order_id)
    for _ in range(2):
        total = sum(a for _, a in chosen)
        if total == 0:
            return None
        route = snap.best_route(token_in, token_out, total)
        if route is None:
            return None
        keep = [(o, a) for o, a in chosen if meets_limit(o, a, route.amount_out * a // total)]
        if len(keep) == len(chosen):
            break
        chosen = keep
    else:
        return None
    fee = sum((route.amount_out * a // total) * o.keeper_fee_bps // BPS for o, a in chosen)
    return PlannedGroup(
        market=market,
        path=route.path,
        order_ids=tuple(o.order_id for o, _ in chosen),
        amounts=tuple(a for _, a in chosen),
        keeper_fee_out=fee,
        token_out=token_out,
    )


def batch_action(
    key: str,
    book: str,
    groups: Sequence[PlannedGroup],
    snap: MarketSnapshot,
    fee_recipient: str,
    native_token: str | None,
) -> Action | None:
    """One executeBatchAtLeast transaction carrying every group, valued at the keeper fees it
    earns. It must fill at least one order, so a keeper that loses the race for all of them
    reverts, and its bundle is dropped at no cost instead of landing a no-op."""
    groups = [g for g in groups if g.order_ids]
    if not groups:
        return None
    fee_usd = sum(snap.value_usd(g.token_out, g.keeper_fee_out) for g in groups)
    orders = sum(len(g.order_ids) for g in groups)
    gas = GAS_BASE + GAS_PER_ORDER * orders + GAS_PER_GROUP * (len(groups) - 1)
    data = calldata(
        "OrderBook", "executeBatchAtLeast", [g.as_abi() for g in groups], checksum(fee_recipient), 1
    )
    return Action(
        idempotency_key=key,
        calls=(Call(to=checksum(book), data=data, gas_limit=gas),),
        expected_value_wei=usd_to_wei(snap, fee_usd, native_token),
        labels={"orders": str(orders)},
        order_ids=tuple(i for g in groups for i in g.order_ids),
    )

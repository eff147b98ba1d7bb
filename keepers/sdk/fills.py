"""Planning OrderBook fills off-chain with the contract's own rules, so what a strategy sends
is what the contract will accept: per market, the largest set of orders one shared swap fills
at every order's limit and within every order's fairness tolerance of the oracle's rate, then
the ones left out on the state the earlier swaps leave behind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from keepers.engine.market import MarketSnapshot, Route
from keepers.engine.views import OrderView
from keepers.sdk.common import calldata, checksum, usd_to_wei
from keepers.tx.actions import Action, Call

BPS = 10_000
#: OrderBook.DEFAULT_TOLERANCE_BPS: a market's tolerance until its owner sets another.
DEFAULT_TOLERANCE_BPS = 300
#: Gas of a batch: measured (bench/gas.py in the repository) with room for cold pools and two-hop routes; a
#: figure short of what the batch needs is doubled by the transaction manager's simulation.
GAS_BASE, GAS_PER_ORDER, GAS_PER_GROUP = 150_000, 40_000, 110_000


def meets_limit(order: OrderView, fill_in: int, out: int) -> bool:
    net = out - out * order.keeper_fee_bps // BPS
    return net * order.amount_in >= fill_in * order.min_amount_out


def tolerance_of(snap: MarketSnapshot, order: OrderView) -> int:
    """The order's fairness tolerance in bps: its own, else its market's (the contract's rule)."""
    return order.tolerance_bps or snap.tolerance.get(order.market, DEFAULT_TOLERANCE_BPS)


def is_fair(snap: MarketSnapshot, market: int, total_in: int, out: int, tolerances: Sequence[int]) -> bool:
    """Whether a group's quote `out` for `total_in` is within every tolerance of the oracle's
    rate, as the OrderBook checks it (orders whose tolerance is 10,000 need no oracle)."""
    strict = min(tolerances, default=BPS)
    if strict >= BPS:
        return True
    token_in, token_out = snap.markets[market]
    fair = snap.fair_out(token_in, token_out, total_in)
    return fair is not None and out * BPS >= fair * (BPS - strict)


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


def _need(order: OrderView) -> Fraction:
    """Output per unit of input the order needs before its keeper fee: lower is easier to fill."""
    return Fraction(order.min_amount_out * BPS, order.amount_in * (BPS - order.keeper_fee_bps))


def plan_group(
    snap: MarketSnapshot, market: int, items: Sequence[tuple[OrderView, int]]
) -> PlannedGroup | None:
    """The largest set of `items` (order, input amount) one shared swap fills at every order's
    limit and within every order's tolerance of the oracle, as one group, or None.

    Orders are taken easiest first: each joins if the group's best route still pays every
    member at its limit with it. A batch that drops orders only when the whole aggregate misses
    (as a single re-quote does) can leave a block with nothing filled although its easiest
    orders would fill; taken one by one, every order that fills alone is in, unless the
    orders that come before it in the block leave the price beyond it.
    """
    if market not in snap.markets:
        return None
    token_in, token_out = snap.markets[market]
    chosen: list[tuple[OrderView, int]] = []
    best: tuple[Route, int] | None = None
    for item in sorted((it for it in items if it[1] > 0), key=lambda it: (_need(it[0]), it[0].order_id)):
        trial = [*chosen, item]
        total = sum(a for _, a in trial)
        route = snap.best_route(token_in, token_out, total)
        if (
            route is not None
            and all(meets_limit(o, a, route.amount_out * a // total) for o, a in trial)
            and is_fair(snap, market, total, route.amount_out, [tolerance_of(snap, o) for o, _ in trial])
        ):
            chosen, best = trial, (route, total)
    if best is None:
        return None
    route, total = best
    chosen.sort(key=lambda it: it[0].order_id)  # the contract takes a group's ids ascending
    fee = sum((route.amount_out * a // total) * o.keeper_fee_bps // BPS for o, a in chosen)
    return PlannedGroup(
        market=market,
        path=route.path,
        order_ids=tuple(o.order_id for o, _ in chosen),
        amounts=tuple(a for _, a in chosen),
        keeper_fee_out=fee,
        token_out=token_out,
    )


def plan_groups(
    snap: MarketSnapshot,
    by_market: Mapping[int, Sequence[tuple[OrderView, int]]],
    max_groups_per_market: int = 4,
) -> list[PlannedGroup]:
    """Groups for one transaction, planned in the order they will execute: each on the state
    the groups before it leave behind (their swaps applied to the pools off-chain), so a later
    group's quote is the one it will get. Per market, the best route takes the orders it can
    fill, then the orders left out try again on the state after it (another pool, another
    route, or the same pool moved the other way by an opposite market)."""
    groups: list[PlannedGroup] = []
    state = snap
    # Markets share pools (both directions of a pair, two-hop routes): the market holding the
    # oldest order plans first, so no order waits behind younger ones for long.
    for market, items in sorted(
        by_market.items(), key=lambda kv: min((o.order_id for o, _ in kv[1]), default=0)
    ):
        left = list(items)
        for _ in range(max_groups_per_market):
            group = plan_group(state, market, left) if left else None
            if group is None:
                break
            groups.append(group)
            state = state.after_swap(group.path, snap.markets[market][0], sum(group.amounts))
            placed = set(group.order_ids)
            left = [it for it in left if it[0].order_id not in placed]
    return groups


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
        # One block: the next block's plan is made from the next block's prices, so a stale
        # bundle is never retried; a miss frees the nonce for it (BundleSubmitter._settle).
        deadline_blocks=1,
        labels={"orders": str(orders)},
        order_ids=tuple(i for g in groups for i in g.order_ids),
    )

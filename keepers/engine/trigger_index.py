"""In-memory trigger index for limit, stop-loss and take-profit orders.

Per market, three sorted lists: limit orders by limit rate, stop-loss and take-profit orders by
trigger. A price move then touches only the orders it crosses: a bisection finds the boundary
and the crossed orders are a contiguous slice, O(log n + k), instead of a scan of every open
order (or an eth_call per order, as checker-per-order automation does).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from fractions import Fraction

LIMIT, STOP_LOSS, TAKE_PROFIT = 0, 1, 2
#: Limit rates are kept as integers scaled by 2**96 (tokenOut raw units per tokenIn raw unit).
RATE_SCALE = 2**96


def limit_rate(min_amount_out: int, amount_in: int) -> int:
    """An order's limit as an integer rate, rounded up (never admits a fill the contract refuses)."""
    return -(-min_amount_out * RATE_SCALE // amount_in)


@dataclass
class _MarketIndex:
    limits: list[tuple[int, int]] = field(default_factory=list)  # (limit rate, id) ascending
    stops: list[tuple[int, int]] = field(default_factory=list)  # (trigger, id) ascending
    takes: list[tuple[int, int]] = field(default_factory=list)  # (trigger, id) ascending
    armed: set[int] = field(default_factory=set)


class TriggerIndex:
    def __init__(self) -> None:
        self._markets: dict[int, _MarketIndex] = {}
        self._where: dict[
            int, tuple[int, str, tuple[int, int] | None]
        ] = {}  # id -> (market, list name, entry)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._where

    def upsert(
        self,
        order_id: int,
        market: int,
        kind: int,
        *,
        min_out: int,
        amount_in: int,
        trigger: int,
        armed: bool,
    ) -> None:
        self.remove(order_id)
        idx = self._markets.setdefault(market, _MarketIndex())
        if kind in (STOP_LOSS, TAKE_PROFIT) and armed:
            idx.armed.add(order_id)
            self._where[order_id] = (market, "armed", None)
            return
        if kind == LIMIT:
            entry, name = (limit_rate(min_out, amount_in), order_id), "limits"
        elif kind == STOP_LOSS:
            entry, name = (trigger, order_id), "stops"
        elif kind == TAKE_PROFIT:
            entry, name = (trigger, order_id), "takes"
        else:
            raise ValueError(f"order kind {kind} is not indexed by trigger")
        insort(getattr(idx, name), entry)
        self._where[order_id] = (market, name, entry)

    def remove(self, order_id: int) -> None:
        where = self._where.pop(order_id, None)
        if where is None:
            return
        market, name, entry = where
        idx = self._markets[market]
        if name == "armed":
            idx.armed.discard(order_id)
            return
        assert entry is not None
        lst: list[tuple[int, int]] = getattr(idx, name)
        i = bisect_left(lst, entry)
        if i < len(lst) and lst[i] == entry:
            del lst[i]

    def crossed(self, market: int, pool_rate: Fraction | None, oracle_rate: int | None) -> list[int]:
        """Ids whose condition holds: limits at or below the best pool rate (tokenOut raw per
        tokenIn raw), stop-losses at or above the oracle rate, take-profits at or below it, and
        every armed stop."""
        idx = self._markets.get(market)
        if idx is None:
            return []
        out = sorted(idx.armed)
        if pool_rate is not None and idx.limits:
            bound = int(pool_rate * RATE_SCALE)
            out += [oid for _, oid in idx.limits[: bisect_right(idx.limits, (bound, 2**256))]]
        if oracle_rate is not None:
            out += [oid for _, oid in idx.stops[bisect_left(idx.stops, (oracle_rate, -1)) :]]
            out += [oid for _, oid in idx.takes[: bisect_right(idx.takes, (oracle_rate, 2**256))]]
        return out

"""The signer's spend limit: the most its signatures can cost in any hour, fees and value.

A nonce lands at most once, so what one nonce can cost is the largest `gas x maxFeePerGas +
value` of any transaction signed for it; signing it again (a bundle re-targeted, a fee bumped) only
counts the difference. A nonce's cost stays in the window for an hour after its last signature.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 3600.0


class BudgetExceeded(RuntimeError):
    pass


@dataclass
class _Spent:
    wei: int
    at: float


class FeeBudget:
    def __init__(self, limit_wei: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_wei = limit_wei
        self._clock = clock
        self._spent: dict[tuple[int, int], _Spent] = {}  # (chain id, nonce) -> worst cost

    def spent(self) -> int:
        self._expire()
        return sum(s.wei for s in self._spent.values())

    def charge(self, chain_id: int, nonce: int, cost_wei: int) -> None:
        """Books a signature costing at most `cost_wei`, or refuses it."""
        if self.limit_wei is None:
            return  # nothing to enforce, nothing to keep (a caller cannot grow it without bound)
        now = self._clock()
        self._expire()
        key = (chain_id, nonce)
        before = self._spent.get(key)
        worst = max(cost_wei, before.wei if before else 0)
        total = self.spent() - (before.wei if before else 0) + worst
        if self.limit_wei is not None and total > self.limit_wei:
            raise BudgetExceeded(
                f"spend limit: fees signed in the last hour would reach {total} wei,"
                f" limit {self.limit_wei} wei"
            )
        self._spent[key] = _Spent(worst, now)

    def _expire(self) -> None:
        horizon = self._clock() - WINDOW_SECONDS
        for key in [k for k, s in self._spent.items() if s.at < horizon]:
            del self._spent[key]

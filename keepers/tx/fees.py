"""EIP-1559 fees: from the next base fee and recent priority fees, capped by configuration and by
what the action is worth; bumped by the replacement rule for the public mempool."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3
from web3.types import RPCEndpoint

GWEI = 10**9
#: Nodes accept a replacement only if both fee fields rise by at least 10%; we bump 12.5%.
BUMP_NUM, BUMP_DEN = 9, 8


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def bumped(self, floor: Fees | None = None) -> Fees:
        """At least +12.5% on both fields (and at least the floor, e.g. the current market)."""
        tip = -(-self.max_priority_fee_per_gas * BUMP_NUM // BUMP_DEN)
        cap = -(-self.max_fee_per_gas * BUMP_NUM // BUMP_DEN)
        if floor:
            tip, cap = max(tip, floor.max_priority_fee_per_gas), max(cap, floor.max_fee_per_gas)
        return Fees(max(cap, tip), tip)


class FeeHistoryUnavailable(OSError):
    """The node gave no usable fee history (a node fault: retried at the next head)."""


class FeeTooHigh(RuntimeError):
    """The fee the market asks is above a cap: sending would be a loss or break policy."""


class FeeEstimator:
    def __init__(self, w3: AsyncWeb3[Any], max_fee_gwei: float, min_priority_gwei: float = 0.01) -> None:
        self.w3 = w3
        self.max_fee = int(max_fee_gwei * GWEI)
        self.min_priority = int(min_priority_gwei * GWEI)

    async def estimate(self, blocks: int = 10, percentile: float = 50.0) -> Fees:
        # The raw request: web3's method machinery and result formatters cost more than the read.
        response = await self.w3.provider.make_request(
            RPCEndpoint("eth_feeHistory"), [hex(blocks), "latest", [percentile]]
        )
        history: Any = response.get("result") if isinstance(response, dict) else None
        try:
            if not isinstance(history, dict):
                raise TypeError("not a fee history")
            bases, reward = history["baseFeePerGas"], history.get("reward") or []
            if not isinstance(bases, list) or not isinstance(reward, list):
                raise TypeError("not lists")
            next_base = _quantity(bases[-1])
            if not all(isinstance(r, list) and r for r in reward):
                raise TypeError("a reward entry is not a list of quantities")
            rewards = [q for q in (_quantity(r[0]) for r in reward) if q > 0]
        except (TypeError, KeyError, IndexError, ValueError):
            answer = str(response.get("error", history) if isinstance(response, dict) else response)[:200]
            raise FeeHistoryUnavailable(f"eth_feeHistory: {answer}") from None
        tip = max(self.min_priority, int(statistics.median(rewards)) if rewards else self.min_priority)
        # Two base fees of headroom: the base fee can rise 12.5% a block for ~6 blocks.
        return Fees(2 * next_base + tip, tip)

    def capped(self, fees: Fees, gas: int, value_wei: int | None, *, lower_tip: bool = False) -> Fees:
        """Applies the configured cap and, unless `value_wei` is None, the action's worth.

        With `lower_tip`, an action worth less than the market's tip bids the tip it can afford,
        down to the floor (`min_priority`), instead of not being sent: the market's tip is the
        median of recent blocks (our own bids among them), not a price of inclusion, and a
        builder with room includes any bundle that pays above the base fee."""
        cap = self.max_fee
        if value_wei is not None:
            cap = min(cap, value_wei // max(gas, 1))
        if fees.max_fee_per_gas <= cap:
            return fees
        tip = fees.max_priority_fee_per_gas
        base = (fees.max_fee_per_gas - tip) // 2  # estimate() leaves two base fees of headroom
        if lower_tip and cap - base >= min(tip, self.min_priority):
            tip = min(tip, cap - base)
        if cap < base + tip:
            raise FeeTooHigh(f"the market needs {base + tip} wei/gas; the cap is {cap} wei/gas")
        return Fees(cap, tip)


def _quantity(value: object) -> int:
    """A JSON-RPC quantity ("0x..."), or ValueError."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"not a quantity: {value!r}")
    return int(value, 16)

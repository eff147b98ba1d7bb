"""What a strategy sees of a candidate: frozen, slotted values with the fields strategies read,
not the store's ORM rows (which are mutable, lazily loaded and tied to a session).

Built from the store's rows in this one place (`OrderView.of`, `PositionView.of`,
`VaultView.of`); a candidate source converts each candidate once, so the cost is a few
attribute copies per candidate, and a slotted view holds far less memory than an ORM object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class OrderView:
    """An OrderBook order as the store follows it (amounts in the tokens' raw units)."""

    chain_id: int
    order_id: int
    #: The OrderBook's address (lowercase).
    book: str
    owner: str
    #: The OrderBook market id (`MarketSnapshot.markets[market]` is its (tokenIn, tokenOut)).
    market: int
    #: 0 limit, 1 stop-loss, 2 take-profit, 3 twap, 4 iceberg.
    kind: int
    amount_in: int
    min_amount_out: int
    remaining: int
    expiry: int
    keeper_fee_bps: int
    #: The stop/take-profit trigger (tokenOut per tokenIn, 1e18) or the iceberg's clip size.
    trigger_or_clip: int
    start: int = 0
    interval: int = 0
    slices: int = 0
    #: The order's fairness tolerance (bps below the oracle's rate); 0 = the market's.
    tolerance_bps: int = 0
    #: open, armed, partially_filled (candidates are open orders).
    status: str = "open"
    placed_block: int = 0
    updated_block: int = 0

    @classmethod
    def of(cls, row: Any) -> OrderView:
        """The view of a store row (`keepers.store.tables.Order`, or anything with its fields)."""
        return cls(*[getattr(row, name) for name in _ORDER_FIELDS])

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> OrderView:
        """The view of a row as a mapping of column names (a Block's changed order rows)."""
        return cls(*[row[name] for name in _ORDER_FIELDS])


@dataclass(frozen=True, slots=True)
class PositionView:
    """A LendingMarket borrower (principal flow; health is read on chain)."""

    chain_id: int
    #: The LendingMarket's address (lowercase).
    market: str
    borrower: str
    collateral: int
    borrowed: int
    repaid: int
    updated_block: int = 0

    @classmethod
    def of(cls, row: Any) -> PositionView:
        return cls(*[getattr(row, name) for name in _POSITION_FIELDS])


@dataclass(frozen=True, slots=True)
class VaultView:
    """A RebalancingVault basket."""

    chain_id: int
    vault: str
    basket_id: int
    owner: str
    tokens: tuple[str, ...]
    weights_bps: tuple[int, ...]
    drift_threshold_bps: int
    max_slippage_bps: int
    reward_bps: int
    updated_block: int = 0

    @classmethod
    def of(cls, row: Any) -> VaultView:
        values = {name: getattr(row, name) for name in _VAULT_FIELDS}
        values["tokens"], values["weights_bps"] = tuple(values["tokens"]), tuple(values["weights_bps"])
        return cls(**values)


_ORDER_FIELDS = tuple(f.name for f in fields(OrderView))
_POSITION_FIELDS = tuple(f.name for f in fields(PositionView))
_VAULT_FIELDS = tuple(f.name for f in fields(VaultView))

#: Any candidate a built-in candidate source yields.
Candidate = OrderView | PositionView | VaultView

"""Chain events for tests that fill a store without a chain."""

from __future__ import annotations

from keepers.chain.events import Event

BOOK = "0x00000000000000000000000000000000000000b0"
OWNER = "0x00000000000000000000000000000000000000aa"


def placed(order_id: int, block: int, owner: str = OWNER) -> Event:
    """An OrderPlaced of a plain limit order on market 1, as the decoder yields it."""
    params = {
        "kind": 0, "amountIn": 10**18, "minAmountOut": 1, "expiry": 0, "keeperFeeBps": 10,
        "triggerOrClip": 0, "start": 0, "interval": 0, "slices": 0, "toleranceBps": 0,
    }  # fmt: skip
    args = {"id": order_id, "owner": owner, "market": 1, "params": params}
    return Event(block, f"0xb{block}", f"0x{block:064x}", 0, BOOK, "OrderBook", "OrderPlaced", args)

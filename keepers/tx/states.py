"""The transaction state machine, in one place (after Chainlink's transaction manager).

    unstarted ──> in_flight ──> unconfirmed ──> confirmed ──> finalized
        │             │  ^           │              │
        │             │  └───────────┘ (re-sent)    └──> unconfirmed (reorged out)
        └─────────────┴──────────────┴──> dropped (will not land; the nonce is freed)

unstarted: nonce allocated, not yet signed. in_flight: being signed and sent (a restart must
send it again). unconfirmed: accepted by a relay or node, waiting for a receipt. confirmed:
receipt seen. finalized: confirmed and deep enough that no reorg undoes it.
"""

from __future__ import annotations

from enum import StrEnum


class TxState(StrEnum):
    UNSTARTED = "unstarted"
    IN_FLIGHT = "in_flight"
    UNCONFIRMED = "unconfirmed"
    CONFIRMED = "confirmed"
    FINALIZED = "finalized"
    DROPPED = "dropped"


ALLOWED: dict[TxState, frozenset[TxState]] = {
    TxState.UNSTARTED: frozenset({TxState.IN_FLIGHT, TxState.DROPPED}),
    TxState.IN_FLIGHT: frozenset({TxState.UNCONFIRMED, TxState.CONFIRMED, TxState.DROPPED}),
    TxState.UNCONFIRMED: frozenset({TxState.IN_FLIGHT, TxState.CONFIRMED, TxState.DROPPED}),
    TxState.CONFIRMED: frozenset({TxState.FINALIZED, TxState.UNCONFIRMED}),
    TxState.FINALIZED: frozenset(),
    TxState.DROPPED: frozenset(),
}

#: States that hold their nonce.
LIVE = frozenset(s for s in TxState if s is not TxState.DROPPED)
#: States that may still need sending or watching.
PENDING = frozenset({TxState.UNSTARTED, TxState.IN_FLIGHT, TxState.UNCONFIRMED})


class InvalidTransition(ValueError):
    """A state change the machine does not allow."""

    def __init__(self, tx_id: int, current: TxState, target: TxState) -> None:
        super().__init__(f"tx {tx_id}: {current} -> {target} is not allowed")
        self.tx_id, self.current, self.target = tx_id, current, target


def check_transition(tx_id: int, current: TxState, target: TxState) -> None:
    if target not in ALLOWED[current]:
        raise InvalidTransition(tx_id, current, target)

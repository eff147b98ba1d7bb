"""The transaction state machine, in one place (after Chainlink's transaction manager).

    unstarted ──> unconfirmed ──> confirmed ──> finalized
        │   │          │  ^  ^        │         │
        │   │          │  │  └────────┘         │ (reorged out)
        │   │          │  └─────────────────────┘ (reorged out past `confirmations`)
        │   └──────────┼──> confirmed (found mined: sent before a crash, recorded after)
        └──────────────┴──> dropped (will not land; the nonce is freed)

unstarted: nonce allocated and the record written (fees included, so the signed transaction
and its hash can be derived again after a crash); unconfirmed: sent at least once, waiting for
a receipt; confirmed: mined in a canonical block; finalized: confirmed `confirmations` blocks
deep, no longer watched by settlement (a reorg deeper than that still reopens it:
reconciliation finds it from the chain's nonce); dropped: it will not land (a missed bundle, a
refused simulation, a public transaction superseded by a no-op), and its nonce is free again
unless a replacement holds it.

Every transition is one compare-and-set statement (`UPDATE ... WHERE state IN FROM[target]`):
a transition already made is a no-op, never an error, whoever repeats it.
"""

from __future__ import annotations

from enum import StrEnum


class TxState(StrEnum):
    UNSTARTED = "unstarted"
    UNCONFIRMED = "unconfirmed"
    CONFIRMED = "confirmed"
    FINALIZED = "finalized"
    DROPPED = "dropped"


#: The states a transition into each state may start from.
FROM: dict[TxState, frozenset[TxState]] = {
    TxState.UNSTARTED: frozenset(),
    # From finalized only by a move that says so (Move.reopen: a reorg deeper than
    # `confirmations`, which the follower saw), never by a stale "sent" or "fee bumped".
    TxState.UNCONFIRMED: frozenset({TxState.UNSTARTED, TxState.UNCONFIRMED, TxState.CONFIRMED}),
    TxState.CONFIRMED: frozenset({TxState.UNSTARTED, TxState.UNCONFIRMED}),
    TxState.FINALIZED: frozenset({TxState.CONFIRMED}),
    TxState.DROPPED: frozenset({TxState.UNSTARTED, TxState.UNCONFIRMED}),
}

#: States that hold their nonce.
LIVE = frozenset(s for s in TxState if s is not TxState.DROPPED)
#: States still waiting on the chain.
PENDING = frozenset({TxState.UNSTARTED, TxState.UNCONFIRMED})
#: States whose transaction is on chain (and may yet be reorged out, until finalized).
MINED = frozenset({TxState.CONFIRMED, TxState.FINALIZED})

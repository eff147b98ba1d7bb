"""A block as the keeper sees it: the chain's header and what following the chain up to it
changed in the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Header(NamedTuple):
    number: int
    hash: str
    parent_hash: str
    timestamp: int

    @classmethod
    def from_json(cls, block: dict[str, Any]) -> Header:
        return cls(int(block["number"], 16), block["hash"], block["parentHash"], int(block["timestamp"], 16))


@dataclass(frozen=True)
class Block:
    number: int
    hash: str
    timestamp: int
    #: The number of the Block its follower returned before this one (-1: none). What is
    #: below carries everything since then: a consumer that missed that Block reads the store.
    previous: int = -1
    #: Events newly stored since the previous Block.
    applied: int = 0
    #: Set when the store was rolled back to this block (a reorg) before the new branch was read.
    fork_block: int | None = None
    rolled_back: int = 0
    #: The order rows those events changed, as stored (order id -> row); None when there were
    #: too many to carry (a long catch-up): read the store instead.
    orders: dict[int, dict[str, Any]] | None = field(default_factory=dict)

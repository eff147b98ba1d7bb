"""Work split across the live replicas of one keeper: N shard leases, each held by at most one
replica at a time, spread over the members by rendezvous hashing.

Every replica renews a membership lease and reads who else is alive; a shard belongs to the
member with the highest hash of (shard, member), so every replica computes the same owner
without talking to the others. A replica takes the shards it should own once they are free,
and gives back the ones it should not (at once, so a newcomer gets them within a renewal or
two); a dead replica's shards lapse with its leases and are taken by the survivors. Because a
shard is a lease, two replicas never act on one shard at the same time; the nonce manager
checks the leases of every shard an action touches in the transaction that allocates its
nonce (the same fence as leader election).

What a shard holds is the caller's choice (`shard_of`): orders shard by market, so the orders
one batch fills through one shared swap stay with one replica.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Unpack

import anyio
import structlog

from keepers.ha.elector import SAFE_SHARE, Renewing, Timing
from keepers.ha.lease import Fence, LeaseStore, NotLeader, Term
from keepers.obs import metrics

log = structlog.get_logger("shards")

#: The shards of the action being submitted (set by the keeper loop around a submission).
_acting_for: ContextVar[frozenset[int] | None] = ContextVar("acting_for", default=None)


def owner(shard: int, members: Iterable[str]) -> str | None:
    """Rendezvous hashing: the member with the highest score for this shard."""
    best, best_score = None, b""
    for m in members:
        score = hashlib.sha256(f"{shard}:{m}".encode()).digest()
        if score > best_score:
            best, best_score = m, score
    return best


class ShardSet(Renewing):
    def __init__(self, leases: LeaseStore, prefix: str, shards: int, **timing: Unpack[Timing]) -> None:
        if shards < 1:
            raise ValueError("at least one shard")
        super().__init__(leases, **timing)
        self.prefix = prefix
        self.shards = shards
        self.members: list[str] = []
        self._held: dict[int, Term] = {}
        self._member_token = 0

    def _scope(self, shard: int) -> str:
        return f"{self.prefix}/shard/{shard}"

    @property
    def member_scope(self) -> str:
        return f"{self.prefix}/member/{self.holder}"

    @property
    def held(self) -> frozenset[int]:
        """The shards this replica may act on now."""
        return frozenset(self._held) if time.monotonic() < self._valid_until else frozenset()

    @property
    def is_leader(self) -> bool:
        """Holds at least one shard (the elector's word, so loop and health read both alike)."""
        return bool(self.held)

    def owns(self, key: int) -> bool:
        return key % self.shards in self.held

    @contextmanager
    def acting_for(self, keys: Iterable[int]) -> Iterator[None]:
        """Marks the submission in this context as work on these keys' shards (for the fence)."""
        token = _acting_for.set(frozenset(k % self.shards for k in keys))
        try:
            yield
        finally:
            _acting_for.reset(token)

    def fence(self) -> Fence:
        """Every shard the current action touches must still be ours (the membership lease
        stands in for actions that name no shard)."""
        wanted = _acting_for.get()
        held = self.held
        if not held:
            raise NotLeader(f"no shard of {self.prefix} is held")
        if not wanted:
            return Fence(self.leases, self.holder, ((self.member_scope, self._member_token),))
        missing = wanted - held
        if missing:
            raise NotLeader(f"shards {sorted(missing)} of {self.prefix} are not held")
        return Fence(
            self.leases, self.holder, tuple((self._scope(s), self._held[s].token) for s in sorted(wanted))
        )

    async def step(self) -> frozenset[int]:
        """Renews membership, reads the members, takes the shards we should own, gives back
        the others; returns the shards held."""
        started = time.monotonic()
        try:
            self._held = await anyio.to_thread.run_sync(self._rebalance)
        except Exception as exc:  # noqa: BLE001 - keep what we hold until it lapses locally
            log.warning("shard renewal failed", prefix=self.prefix, error=repr(exc))
        else:
            self._valid_until = started + self.lease_seconds * SAFE_SHARE
        held = self.held
        metrics.SHARDS_HELD.labels(*self.labels).set(len(held))
        metrics.LEADER.labels(*self.labels).set(1 if held else 0)
        return held

    def _rebalance(self) -> dict[int, Term]:
        member = self.leases.acquire_many([self.member_scope], self.holder, self.lease_seconds)
        self._member_token = member[self.member_scope].token if member else 0
        members = self.leases.live_holders(f"{self.prefix}/member/")
        if self.holder not in members:
            members.append(self.holder)
        self.members = sorted(members)
        mine = {s for s in range(self.shards) if owner(s, self.members) == self.holder}
        surplus = [self._scope(s) for s in self._held if s not in mine]
        if surplus:
            self.leases.release_many(surplus, self.holder)
        granted = self.leases.acquire_many(
            [self._scope(s) for s in sorted(mine)], self.holder, self.lease_seconds
        )
        held = {s: granted[self._scope(s)] for s in mine if self._scope(s) in granted}
        if set(held) != set(self._held):
            log.info("shards moved", held=len(held), members=len(self.members), holder=self.holder)
            metrics.LEADER_CHANGES.labels(*self.labels).inc()
        return held

    def _held_scopes(self) -> list[str]:
        return [self._scope(s) for s in self._held] + [self.member_scope]

    def _forget(self) -> None:
        self._held = {}
        metrics.SHARDS_HELD.labels(*self.labels).set(0)

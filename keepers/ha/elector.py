"""Leader election for the replicas of one keeper on one chain.

Every replica follows the chain and keeps its store current; only the lease holder asks its
strategy and submits. A standby tries to take the lease every `renew_seconds`, so it leads
within `lease_seconds + renew_seconds` of a leader's death (at once after a clean stop, which
releases the lease). A leader whose renewals stop getting through (database unreachable,
process paused) stops acting locally before the lease can lapse in the database, and the fence
(keepers.ha.lease) refuses it anything it still tries after a pause.
"""

from __future__ import annotations

import time
from typing import TypedDict, Unpack

import anyio
import structlog

from keepers.ha.lease import Fence, LeaseStore, NotLeader, Term, holder_id
from keepers.obs import metrics

log = structlog.get_logger("leader")

#: A leader stops acting this share of a lease after the renewal that granted it, so it is
#: quiet before the database lets a standby in.
SAFE_SHARE = 0.8


class Timing(TypedDict, total=False):
    """How a lease holder renews, and who it is (for logs and metrics)."""

    lease_seconds: float
    renew_seconds: float
    holder: str | None
    chain: str
    keeper: str


class Renewing:
    """What every lease holder shares: identity, timing, and the loop that renews until
    cancelled and then hands everything back at once (a successor need not wait for a lapse)."""

    def __init__(
        self,
        leases: LeaseStore,
        *,
        lease_seconds: float = 6.0,
        renew_seconds: float = 2.0,
        holder: str | None = None,
        chain: str = "",
        keeper: str = "",
    ) -> None:
        if renew_seconds >= lease_seconds * SAFE_SHARE:
            raise ValueError("renew_seconds must be well under lease_seconds")
        self.leases = leases
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.holder = holder or holder_id()
        self.labels = (chain, keeper)
        self._valid_until = 0.0  # monotonic

    async def step(self) -> object:
        raise NotImplementedError

    def _held_scopes(self) -> list[str]:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                await anyio.sleep(self.renew_seconds)
        finally:
            scopes = self._held_scopes()
            if scopes:
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(self.leases.release_many, scopes, self.holder)
                        log.info("leases released", scopes=len(scopes), holder=self.holder)
                    except Exception as exc:  # noqa: BLE001 - they lapse by themselves
                        log.warning("could not release the leases", error=repr(exc))
            self._forget()


class LeaderElector(Renewing):
    def __init__(self, leases: LeaseStore, scope: str, **timing: Unpack[Timing]) -> None:
        super().__init__(leases, **timing)
        self.scope = scope
        self._term: Term | None = None
        self._led = False  # what the last step found (a pause can end a term between steps)
        metrics.LEADER.labels(*self.labels).set(0)

    @property
    def is_leader(self) -> bool:
        return self._term is not None and time.monotonic() < self._valid_until

    @property
    def token(self) -> int | None:
        return self._term.token if self.is_leader and self._term else None

    def fence(self) -> Fence:
        """The fence for an allocation now; NotLeader if we know we do not lead."""
        if not self.is_leader or self._term is None:
            raise NotLeader(f"not the leader of {self.scope}")
        return Fence(self.leases, self.holder, ((self.scope, self._term.token),))

    async def step(self) -> bool:
        """One acquire-or-renew; returns whether we lead."""
        started = time.monotonic()
        try:
            term = await anyio.to_thread.run_sync(
                self.leases.acquire, self.scope, self.holder, self.lease_seconds
            )
        except Exception as exc:  # noqa: BLE001 - the database is away: keep the term until it ends
            log.warning("lease renewal failed", scope=self.scope, error=repr(exc))
            term = self._term if self.is_leader else None
        else:
            if term is not None:
                self._valid_until = started + self.lease_seconds * SAFE_SHARE
        self._term = term
        now = self.is_leader
        if now != self._led:
            self._led = now
            metrics.LEADER_CHANGES.labels(*self.labels).inc()
            log.info(
                "leading" if now else "standing by",
                scope=self.scope,
                holder=self.holder,
                token=term.token if term else None,
            )
        metrics.LEADER.labels(*self.labels).set(1 if now else 0)
        return now

    def _held_scopes(self) -> list[str]:
        return [self.scope] if self._term is not None else []

    def _forget(self) -> None:
        self._term = None
        metrics.LEADER.labels(*self.labels).set(0)

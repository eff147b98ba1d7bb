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

import anyio
import structlog

from keepers.ha.lease import Fence, LeaseStore, NotLeader, Term, holder_id
from keepers.obs import metrics

log = structlog.get_logger("leader")

#: A leader stops acting this share of a lease after the renewal that granted it, so it is
#: quiet before the database lets a standby in.
SAFE_SHARE = 0.8


class LeaderElector:
    def __init__(
        self,
        leases: LeaseStore,
        scope: str,
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
        self.scope = scope
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.holder = holder or holder_id()
        self.labels = (chain, keeper)
        self._term: Term | None = None
        self._valid_until = 0.0  # monotonic
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

    async def run(self) -> None:
        """Keeps leading or waiting to lead until cancelled; a leader releases on the way out."""
        try:
            while True:
                await self.step()
                await anyio.sleep(self.renew_seconds)
        finally:
            if self._term is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(self.leases.release, self.scope, self.holder)
                        log.info("lease released", scope=self.scope)
                    except Exception as exc:  # noqa: BLE001 - it lapses by itself
                        log.warning("could not release the lease", error=repr(exc))
                self._term = None
                metrics.LEADER.labels(*self.labels).set(0)

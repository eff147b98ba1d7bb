"""A separate process allocating nonces, as one keeper process does: under a lease of its own
(a keeper kind's leader lease), checked by every allocation as in production.

python -m tests.helpers.nonce_worker URL CHAIN SIGNER WORKER COUNT SEED
"""

from __future__ import annotations

import json
import random
import sys
import time

from keepers.ha.lease import Fence, LeaseStore
from keepers.store.engine import make_engine
from keepers.tx.records import Intent, Move, TxRecords
from keepers.tx.states import TxState


class _Lease:
    """The fence of one lease held for the whole run."""

    def __init__(self, leases: LeaseStore, scope: str, holder: str) -> None:
        term = leases.acquire(scope, holder, ttl=3600)
        assert term is not None
        self._fence = Fence(leases, holder, ((scope, term.token),))

    def fence(self) -> Fence:
        return self._fence


def main() -> None:
    url, chain, signer, worker, count, seed = sys.argv[1:7]
    rng = random.Random(int(seed))
    engine = make_engine(url)
    lease = _Lease(LeaseStore(engine), f"nonce-worker:{worker}", worker)
    nm = TxRecords(engine, int(chain), signer, fences=lease)
    mine: list[int] = []
    released = 0
    nm.next_nonce()  # connect and warm up before the clock starts
    started = time.time()
    for i in range(int(count)):
        (rec,) = nm.allocate([Intent(f"{worker}-{i}", to=None)])
        assert rec.id is not None
        mine.append(rec.id)
        if rng.random() < 0.05:
            victim = rng.choice(mine)
            # A compare-and-set drop: a victim dropped already (or by another worker) moves nothing.
            released += len(nm.apply([Move(victim, TxState.DROPPED, "bundle missed its blocks")]))
    print(
        json.dumps(
            {
                "worker": worker,
                "allocated": len(mine),
                "released": released,
                "start": started,
                "end": time.time(),
            }
        )
    )


if __name__ == "__main__":
    main()

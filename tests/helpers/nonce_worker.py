"""A separate process allocating nonces, as one keeper process does.

python -m tests.helpers.nonce_worker URL CHAIN SIGNER WORKER COUNT SEED
"""

from __future__ import annotations

import json
import random
import sys
import time

from keepers.store.engine import make_engine
from keepers.tx.records import Intent, Move, TxRecords
from keepers.tx.states import TxState


def main() -> None:
    url, chain, signer, worker, count, seed = sys.argv[1:7]
    rng = random.Random(int(seed))
    nm = TxRecords(make_engine(url), int(chain), signer)
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

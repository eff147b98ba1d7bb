"""Python's cyclic garbage collector, kept off the reaction path.

A full (generation 2) collection walks every tracked object of the process and stops every
thread while it does: on a keeper's heap (web3, the trigger index, the store's rows) that
measured 150 to 240 ms on our 2-core machines, and it lands in whichever block it likes (the
reaction bench's slowest blocks were exactly those). So, as latency-sensitive Python services
do (Instagram's `gc.freeze`), what exists after the keeper's first block is frozen: automatic
collections then walk only what was made since. Between blocks, right after a block's work
is sent, the young objects are collected and frozen too; now and then everything is unfrozen
and collected, so garbage cycles among frozen objects cannot pile up.
"""

from __future__ import annotations

import gc


class CollectBetweenBlocks:
    def __init__(self, freeze_every: int = 16, full_every: int = 1024) -> None:
        self.freeze_every = freeze_every
        self.full_every = full_every
        self.blocks = 0

    def after_block(self) -> None:
        """Called when a block's work is done: the next block's reaction is not waiting."""
        if self.blocks % self.full_every == 0:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        elif self.blocks % self.freeze_every == 0:
            gc.collect()  # only what is not frozen: what the last blocks made
            gc.freeze()
        self.blocks += 1

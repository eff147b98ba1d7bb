"""The decision for one block, shared by the live loop and `keepers replay`: the strategy's
actions (guarded: a crash, a timeout or invalid output costs this block and is counted), less
those not worth sending."""

from __future__ import annotations

import structlog

from keepers.engine.guard import guarded_on_block
from keepers.engine.strategy import BlockContext, Strategy
from keepers.obs import metrics
from keepers.tx.actions import Action

log = structlog.get_logger("keeper")


async def decide(
    strategy: Strategy, ctx: BlockContext, *, kind: str, name: str, timeout: float
) -> list[Action]:
    actions = await guarded_on_block(strategy, ctx, keeper=kind, name=name, timeout=timeout)
    worth = []
    for action in actions:
        if action.expected_value_wei <= 0 and not action.public_good:
            metrics.ACTIONS.labels(ctx.chain, "unprofitable").inc()
            log.info("action dropped: not worth sending", key=action.idempotency_key)
            continue
        worth.append(action)
    return worth

"""Runs a strategy so that its failures stay its own: an exception, a timeout or output that is
not a list of Actions is logged, counted, and turned into "no actions this block"."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import structlog

from keepers.engine.strategy import BlockContext, Strategy
from keepers.obs import metrics
from keepers.tx.actions import Action

log = structlog.get_logger("strategy")


async def guarded_on_block(
    strategy: Strategy, ctx: BlockContext, *, keeper: str, name: str, timeout: float
) -> list[Action]:
    try:
        with anyio.fail_after(timeout):
            out = await strategy.on_block(ctx)
    except TimeoutError:
        metrics.STRATEGY_ERRORS.labels(keeper, name, "timeout").inc()
        log.error("strategy timed out", keeper=keeper, strategy=name, block=ctx.number, timeout=timeout)
        return []
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:  # noqa: BLE001 - containment is the point
        metrics.STRATEGY_ERRORS.labels(keeper, name, "exception").inc()
        log.error("strategy raised", keeper=keeper, strategy=name, block=ctx.number, error=repr(exc))
        return []
    if (
        not isinstance(out, Sequence)
        or isinstance(out, (str, bytes))
        or not all(isinstance(a, Action) for a in out)
    ):
        metrics.STRATEGY_ERRORS.labels(keeper, name, "invalid").inc()
        log.error("strategy returned something other than a list of Actions", keeper=keeper, strategy=name,
                  got=type(out).__name__)  # fmt: skip
        return []
    return list(out)

"""Runs a strategy so that its failures stay its own: an exception, a timeout or output that is
not a list of Actions is logged, counted, and turned into "no actions this block"; an Action
that is malformed (not an address, a negative amount, a gas limit no block holds, a key used
twice) is dropped by itself, counted the same way, and never reaches the transaction manager."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio
import structlog

from keepers.engine.strategy import BlockContext, Strategy
from keepers.obs import metrics
from keepers.tx.actions import Action, Call

log = structlog.get_logger("strategy")


async def guarded_on_block(
    strategy: Strategy, ctx: BlockContext, *, keeper: str, name: str, timeout: float
) -> list[Action]:
    started = time.perf_counter()
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
    finally:
        metrics.STRATEGY_SECONDS.labels(keeper, name).observe(time.perf_counter() - started)
    if (
        not isinstance(out, Sequence)
        or isinstance(out, (str, bytes))
        or not all(isinstance(a, Action) for a in out)
    ):
        metrics.STRATEGY_ERRORS.labels(keeper, name, "invalid").inc()
        log.error("strategy returned something other than a list of Actions", keeper=keeper, strategy=name,
                  got=type(out).__name__)  # fmt: skip
        return []
    return _well_formed(list(out), keeper=keeper, name=name, block=ctx.number)


#: Most actions one strategy may return for one block; the rest is dropped and counted.
MAX_ACTIONS = 1024
MAX_CALLS = 16
#: Above any chain's block gas limit today (mainnet 45M, BSC 140M): a sanity bound, not a policy.
MAX_GAS = 1_000_000_000
MAX_CALLDATA_BYTES = 128 * 1024
UINT256 = 2**256
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


def _uint(v: Any, below: int = UINT256) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < below


def _call_refusal(c: Any) -> str | None:
    if not isinstance(c, Call):
        return f"a call is a {type(c).__name__}, not a Call"
    if not (isinstance(c.to, str) and _ADDRESS.fullmatch(c.to)):
        return "call.to is not a 20-byte hex address"
    if not (isinstance(c.data, str) and len(c.data) <= 2 + 2 * MAX_CALLDATA_BYTES and _HEX.fullmatch(c.data)):
        return f"call.data is not 0x-hex of at most {MAX_CALLDATA_BYTES} bytes"
    if not _uint(c.value):
        return "call.value is not a uint256"
    if not (_uint(c.gas_limit) and 21_000 <= c.gas_limit <= MAX_GAS):
        return f"call.gas_limit is not within 21,000..{MAX_GAS:,}"
    return None


def refusal(a: Action) -> str | None:
    """Why an Action cannot be sent, or None when it is well formed."""
    key = a.idempotency_key
    if not (isinstance(key, str) and 0 < len(key) <= 256 and key.isprintable()):
        return "idempotency_key is not a printable string of 1 to 256 characters"
    if not isinstance(a.calls, (tuple, list)) or not 0 < len(a.calls) <= MAX_CALLS:
        return f"calls is not a sequence of 1 to {MAX_CALLS} Calls"
    for c in a.calls:
        if (why := _call_refusal(c)) is not None:
            return why
    v = a.expected_value_wei
    if not (isinstance(v, int) and not isinstance(v, bool) and -(2**255) <= v < 2**255):
        return "expected_value_wei is not an int256"
    if not _uint(a.coinbase_payment_wei):
        return "coinbase_payment_wei is not a uint256"
    if a.priority_fee_per_gas is not None and not _uint(a.priority_fee_per_gas):
        return "priority_fee_per_gas is not a uint256"
    if not (_uint(a.deadline_blocks) and a.deadline_blocks >= 1):
        return "deadline_blocks is not a positive int"
    if not isinstance(a.public_good, bool):
        return "public_good is not a bool"
    if not (isinstance(a.order_ids, (tuple, list)) and all(_uint(i) for i in a.order_ids)):
        return "order_ids is not a sequence of uint256"
    if not (
        isinstance(a.labels, dict)
        and all(isinstance(k, str) and isinstance(x, str) for k, x in a.labels.items())
    ):
        return "labels is not a dict of strings"
    return None


def _well_formed(actions: list[Action], *, keeper: str, name: str, block: int) -> list[Action]:
    """The well-formed actions, each at most once by key, at most MAX_ACTIONS; the rest counted
    and logged in one line (a strategy returning a million bad actions costs one line)."""
    out: list[Action] = []
    seen: set[str] = set()
    dropped: Counter[str] = Counter()
    for a in actions:
        why = refusal(a)
        if why is None and a.idempotency_key in seen:
            why = "idempotency_key used twice in one block"
        if why is None and len(out) >= MAX_ACTIONS:
            why = f"more than {MAX_ACTIONS} actions in one block"
        if why is not None:
            dropped[why] += 1
            continue
        seen.add(a.idempotency_key)
        out.append(replace(a, calls=tuple(a.calls), order_ids=tuple(a.order_ids)))
    if dropped:
        metrics.STRATEGY_ERRORS.labels(keeper, name, "invalid").inc(sum(dropped.values()))
        log.error("strategy actions dropped", keeper=keeper, strategy=name, block=block,
                  reasons=dict(dropped.most_common(5)))  # fmt: skip
    return out

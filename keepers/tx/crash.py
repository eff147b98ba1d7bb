"""Kill points for fault-injection tests: `KEEPERS_CRASH_AT=<point>[@<n>]` makes this process
SIGKILL itself the n-th time (default the first) it reaches that point of a transaction's
life, exactly as a kill -9 from outside would land there. Unset (always, in production) the
check is one dictionary lookup.

Points: after-allocate (records written, nothing signed), after-sign (signed, not sent),
after-send (sent, not recorded as sent), after-receipt (inclusion seen, not recorded),
before-commit (a settlement's moves built, not applied).
"""

from __future__ import annotations

import os
import signal

POINTS = ("after-allocate", "after-sign", "after-send", "after-receipt", "before-commit")


def _armed() -> dict[str, int]:
    spec = os.environ.get("KEEPERS_CRASH_AT", "")
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, nth = part.partition("@")
        if point not in POINTS:
            raise ValueError(f"KEEPERS_CRASH_AT: unknown point {point!r} (points: {', '.join(POINTS)})")
        out[point] = int(nth or 1)
    return out


_ARMED = _armed()


def crash_point(point: str) -> None:
    """Dies here (SIGKILL) if the environment armed this point and its count is reached."""
    if point not in _ARMED:
        return
    _ARMED[point] -= 1
    if _ARMED[point] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)

"""The suite's own CPU hogs, kept apart from the suite's other devnet runs.

A test that keeps every core busy shows what the product does on a machine that is not its
own. Under xdist, another worker's devnet run would otherwise share the machine with those hogs
as well, and its lateness budget would measure the suite's scheduling, not the product: so a
run beside hogs holds the cores exclusively, and every other devnet run holds them shared. Load
from outside the suite (a busy CI machine) still applies to both.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path


def _lock_file(name: str) -> Path:
    # One per test session: xdist gives its workers the same run id.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    return Path(tempfile.gettempdir()) / f"keepers-tests-{name}-{run}"


@contextmanager
def _cores(mode: int) -> Iterator[None]:
    # Whoever waits for the cores goes through the turnstile first, so a hog run waiting for
    # them is not starved by one shared run after another (flock itself is not fair).
    with _lock_file("turnstile").open("a") as turnstile, _lock_file("cores").open("a") as cores:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(cores, mode)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(cores, fcntl.LOCK_UN)


def sharing_cores() -> AbstractContextManager[None]:
    """For a devnet run: never beside the suite's hogs, beside other such runs."""
    return _cores(fcntl.LOCK_SH)


@contextmanager
def cpu_hogs() -> Iterator[None]:
    """A busy-loop process per core for as long as the block runs: the machine is not ours."""
    with _cores(fcntl.LOCK_EX):
        procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
        ]
        try:
            yield
        finally:
            for p in procs:
                p.kill()
                p.wait()

"""Which lease holders a successor may judge dead (keepers.ha.lease.is_gone): only a process of
this host and process space whose pid is free or reused. Whatever /proc will not tell is alive:
a wrong "gone" would let two live replicas lead at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keepers.ha import lease
from keepers.ha.lease import holder_id, is_gone

pytestmark = pytest.mark.skipif(lease._SPACE is None, reason="no /proc of this pid namespace")


def _with(holder: str, **fields: str) -> str:
    parts = holder.split(":")
    for name, value in fields.items():
        parts[["host", "pid", "nonce", "space", "start"].index(name)] = value
    return ":".join(parts)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_this_process_is_alive_and_a_finished_one_is_gone():
    me = holder_id()
    assert not is_gone(me)
    assert is_gone(_with(me, pid=str(_dead_pid())))
    assert is_gone(_with(me, start="1")), "our pid, another start time: a process before us"


@pytest.mark.parametrize(
    "fields",
    [
        {"host": "elsewhere"},
        {"space": "00000000"},
        {"pid": "²"},  # str.isdigit() says yes; int() says no
        {"pid": "1" * 40},
        {"start": "x"},
    ],
)
def test_other_hosts_spaces_and_malformed_ids_are_presumed_alive(fields: dict[str, str]):
    dead = _with(holder_id(), pid=str(_dead_pid()))
    assert is_gone(dead)
    assert not is_gone(_with(dead, **fields))
    assert not is_gone("a")
    assert not is_gone("host:1:abc")


def test_a_process_proc_hides_is_alive(monkeypatch: pytest.MonkeyPatch):
    """hidepid=2 / ProtectProc=invisible: another user's /proc entry reads as absent while the
    process runs (the kernel answers EPERM to a signal 0); an unreadable one is not judged."""
    dead = _with(holder_id(), pid=str(_dead_pid()))

    def eperm(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", eperm)
    assert not is_gone(dead), "absent from /proc but alive to the kernel"
    monkeypatch.undo()

    real = Path.read_text

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        if str(self).startswith("/proc/") and str(self).endswith("/stat"):
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    assert not is_gone(dead), "an unreadable /proc entry tells nothing"

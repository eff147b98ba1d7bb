"""Taking a secret out of this process's environment so that code loaded later cannot read it
back: from os.environ, from the C environment block (what /proc/self/environ shows), and from
the bytes object that held it."""

from __future__ import annotations

import ctypes
import os
import sys


def scrub_environment(name: str) -> None:
    """Removes a variable from this process's environment and zeroes its value where it was:
    in os.environ's copy and in the C environment block (which /proc/self/environ shows), so
    code loaded later in this process (a strategy plugin) cannot read it back."""
    key = os.fsencode(name)
    value = os.environb.get(key) if os.supports_bytes_environ else None
    libc = ctypes.CDLL(None)
    environ = ctypes.POINTER(ctypes.c_char_p).in_dll(libc, "environ")
    prefix = key + b"="
    i = 0
    while environ[i] is not None:
        entry = environ[i]
        assert entry is not None
        if entry.startswith(prefix):
            address = ctypes.cast(environ, ctypes.POINTER(ctypes.c_void_p))[i]
            assert address is not None
            ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))
        i += 1
    if value is not None:
        del os.environb[key]  # os.environ would decode the value into a str copy first
    if value is not None and len(value) > 1:  # a one-byte bytes object is shared: never touch it
        _zero_bytes(value)


def _zero_bytes(value: bytes) -> None:
    # CPython keeps a bytes object's contents inline after its header; a freed object's bytes
    # stay in the heap until reused, so they are zeroed before the last reference goes.
    offset = sys.getsizeof(b"") - 1
    ctypes.memset(id(value) + offset, 0, len(value))

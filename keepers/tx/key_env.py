"""The funds key's environment variables, taken out of the environment on `keepers run`'s first
line, before any library is imported, and put back only for the moment the signer process is
started.

Libraries decode every environment variable into a str on import (pycryptodome through
`platform.architecture()`, which eth_account imports; `wsgiref.handlers`, which
prometheus_client imports); the str copy of a key stays in the heap after it is freed, where a
strategy plugin loaded later found it. The values are held here in bytearrays and zeroed once
the signer has them. Standard library only: this module is imported before anything else.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from keepers.env_overrides import apply_env
from keepers.tx.scrub import scrub_environment

#: Variable name -> its value, out of the environment until the signer is started.
_HELD: dict[str, bytearray] = {}
#: The config file when --config is not given (keepers.cli's default).
CONFIG_ENV = "KEEPERS_CONFIG"


def hold_for(argv: Sequence[str]) -> None:
    """For `keepers run ...`: holds every variable its config names for a funds key (the top
    level `signer` and each keeper's, KEEPERS__ overrides applied as the loader applies them).
    Anything unreadable here is left alone: the config's own checks report it, and `keepers
    run` refuses to start if a key variable it needs is still in the environment."""
    if not argv or argv[0] != "run":
        return
    hold(signer_variables(config_path(argv[1:], os.environ), os.environ))


def hold(names: Sequence[str]) -> None:
    for name in names:
        value = os.environb.get(os.fsencode(name)) if os.supports_bytes_environ else None
        if name in _HELD or value is None:
            continue
        _HELD[name] = bytearray(value)
        scrub_environment(name)


def is_held(name: str) -> bool:
    """A held variable counts as set (it is not empty)."""
    return bool(_HELD.get(name))


def restore(names: Sequence[str]) -> list[str]:
    """Puts these held variables (one signer's) back into the environment, for a signer about
    to be started (scrub them again once it is); the names put back."""
    back = [name for name in dict.fromkeys(names) if name in _HELD]
    for name in back:
        os.environb[os.fsencode(name)] = bytes(_HELD[name])
    return back


def release() -> None:
    """Zeroes and forgets the held values (the signer has them, or nobody needs them)."""
    for value in _HELD.values():
        value[:] = bytes(len(value))
    _HELD.clear()


def signer_variables(path: str | None, environ: Mapping[str, str]) -> list[str]:
    """The variables a config file names as funds-key references (env, password_env), with
    the KEEPERS__ overrides applied."""
    data: dict[str, Any] = {}
    if path and os.path.isfile(path):  # not a FIFO or a device: the loader reads it next
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, ValueError, RecursionError):
            data = {}
    try:
        # Reads the values of KEEPERS__ variables only (config values and variable names).
        apply_env(data, environ)
    except ValueError:
        return []
    refs = [data.get("signer")]
    keepers = data.get("keepers")
    if isinstance(keepers, dict):
        refs += [k.get("signer") for k in keepers.values() if isinstance(k, dict)]
    names = [
        v for ref in refs if isinstance(ref, dict)
        for k, v in ref.items() if k in ("env", "password_env") and isinstance(v, str)
    ]  # fmt: skip
    return list(dict.fromkeys(names))


def config_path(args: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The file `keepers run`'s parser takes: the last --config (its parser allows no
    abbreviations), else $KEEPERS_CONFIG."""
    path = environ.get(CONFIG_ENV)
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.removeprefix("--config=")
    return path

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

from keepers.tx.scrub import scrub_environment

#: Variable name -> its value, out of the environment until the signer is started.
_HELD: dict[str, bytearray] = {}
#: KEEPERS__ overrides that point a signer reference at another variable.
_OVERRIDE_SUFFIXES = ("__SIGNER__ENV", "__SIGNER__PASSWORD_ENV")


def hold_for(argv: Sequence[str]) -> None:
    """For `keepers run ...`: holds every variable its config names for a funds key (the top
    level `signer` and each keeper's). Anything unreadable here is left alone: the config's own
    checks report it."""
    if not argv or argv[0] != "run":
        return
    hold(signer_variables(_config_path(argv), os.environ))


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


def restore() -> list[str]:
    """Puts the held variables back into the environment, for a signer about to be started
    (scrub them again once it is); their names."""
    for name, value in _HELD.items():
        os.environb[os.fsencode(name)] = bytes(value)
    return list(_HELD)


def release() -> None:
    """Zeroes and forgets the held values (the signer has them, or nobody needs them)."""
    for value in _HELD.values():
        value[:] = bytes(len(value))
    _HELD.clear()


def signer_variables(path: str | None, environ: Mapping[str, str]) -> list[str]:
    """The variables a config file names as funds-key references (env, password_env), with
    the KEEPERS__ overrides that rename them."""
    names: list[str] = []
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, ValueError):
            data = {}
        refs = [data.get("signer")]
        keepers = data.get("keepers")
        if isinstance(keepers, dict):
            refs += [k.get("signer") for k in keepers.values() if isinstance(k, dict)]
        for ref in refs:
            if isinstance(ref, dict):
                names += [v for k, v in ref.items() if k in ("env", "password_env") and isinstance(v, str)]
    # Names only are decoded here, never a value but the overrides' own (variable names).
    names += [environ[n] for n in environ if n.startswith("KEEPERS__") and n.endswith(_OVERRIDE_SUFFIXES)]
    return list(dict.fromkeys(names))


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
    return os.environ.get("KEEPERS_CONFIG")

"""KEEPERS__ environment variables that override config keys (KEEPERS__CHAINS__MAIN__RPC_URL
sets chains.main.rpc_url). Standard library only: keepers.tx.key_env applies them on
`keepers run`'s first line, before any other library is imported, to find the funds key's
variables exactly as the config loader will."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "KEEPERS__"


class OverrideError(ValueError):
    """A KEEPERS__ variable sets a key inside a value that is not a table."""

    def __init__(self, variable: str, key: str) -> None:
        super().__init__(f"{variable} sets {key}, inside a value that is not a table")
        self.variable = variable
        self.key = key


def parse_env_value(raw: str) -> Any:
    """A TOML value (a number, a quoted string, an inline table) or else the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):  # nested past the parser's depth
        return raw


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Applies KEEPERS__ overrides in place; returns the dotted keys it set. Raises
    OverrideError for a variable that sets a key inside a value that is not a table."""
    applied = []
    # Names first, values of ours only: reading every value would copy secrets (a funds key
    # in an environment variable) into this process's heap.
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        raw = environ[name]
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        node = data
        for part in path[:-1]:
            # Table names in our files use dashes (limit-stop) where env names cannot.
            existing = next((k for k in node if k.replace("-", "_") == part), part)
            node = node.setdefault(existing, {})
            if not isinstance(node, dict):
                raise OverrideError(name, ".".join(path))
        if not path:
            continue  # KEEPERS__ alone names no key
        node[path[-1]] = parse_env_value(raw)
        applied.append(".".join(path))
    return applied

"""Where the project's external tools and build output live.

forge, anvil and cast come from npm (`node_modules/.bin`); the compiled contracts from
forge's `contracts/out`. Both can be pointed elsewhere by environment variables, which the
container image does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class ToolchainError(RuntimeError):
    """A required tool or build output is missing; the message says how to get it."""


def find_tool(name: str) -> Path:
    """Path of a Foundry binary: $KEEPERS_<NAME>, then node_modules/.bin, then PATH."""
    override = os.environ.get(f"KEEPERS_{name.upper()}")
    if override:
        return Path(override)
    local = REPO_ROOT / "node_modules" / ".bin" / name
    if local.exists():
        return local
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolchainError(
        f"{name} not found: run `./dev setup` (installs Foundry from npm) or set KEEPERS_{name.upper()}"
    )


def artifacts_dir() -> Path:
    """forge's build output: $KEEPERS_ARTIFACTS or contracts/out in the source tree."""
    override = os.environ.get("KEEPERS_ARTIFACTS")
    return Path(override) if override else REPO_ROOT / "contracts" / "out"

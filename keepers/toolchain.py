"""Where the project's external tools and build output live.

forge, anvil and cast come from npm (`node_modules/.bin`); the compiled contracts from
forge's `contracts/out` in a source tree, else from the copy `./dev build` puts in the package
(`keepers/chain/compiled`, shipped in the wheel). Both can be pointed elsewhere by environment
variables.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The contracts' ABIs and bytecode inside the package (git-ignored, written by `./dev build`).
PACKAGED_ARTIFACTS = Path(__file__).resolve().parent / "chain" / "compiled"


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
    """The compiled contracts: $KEEPERS_ARTIFACTS, else forge's contracts/out in a source checkout,
    else the copy shipped in the package; contracts/out when a checkout has neither, for the error."""
    override = os.environ.get("KEEPERS_ARTIFACTS")
    if override:
        return Path(override)
    # A checkout's own output first: there it is what forge built last. Installed, REPO_ROOT is
    # site-packages, where another distribution's contracts/out must never stand in for ours.
    forge_out = REPO_ROOT / "contracts" / "out"
    if _source_tree() and (forge_out.is_dir() or not PACKAGED_ARTIFACTS.is_dir()):
        return forge_out
    return PACKAGED_ARTIFACTS


def _source_tree() -> bool:
    """Whether this package runs from a keepers checkout (not from site-packages)."""
    try:
        return 'name = "keepers"' in (REPO_ROOT / "pyproject.toml").read_text()
    except OSError:
        return False

"""Contract ABIs and bytecode, read from forge's build output (never hand-copied JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from keepers.toolchain import ToolchainError, artifacts_dir

#: The contracts the keepers deploy and talk to, by name.
PROJECT_CONTRACTS = (
    "OrderBook",
    "BuilderTip",
    "LiquidityPool",
    "PriceOracle",
    "LendingMarket",
    "RebalancingVault",
    "FlashLiquidator",
    "DevnetToken",
)


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str

    def errors(self) -> list[dict[str, Any]]:
        """The custom errors the contract can revert with."""
        return [item for item in self.abi if item.get("type") == "error"]


@cache
def load_artifact(name: str, root: Path | None = None) -> Artifact:
    """Loads `<root>/<name>.sol/<name>.json` as forge writes it."""
    base = root or artifacts_dir()
    path = base / f"{name}.sol" / f"{name}.json"
    if not path.exists():
        raise ToolchainError(f"no build output for {name} at {path}: run `./dev build` (forge build)")
    data = json.loads(path.read_text())
    bytecode = data.get("bytecode", {}).get("object", "")
    if not isinstance(data.get("abi"), list) or not bytecode:
        raise ToolchainError(f"{path} is not a forge artifact (abi or bytecode missing)")
    return Artifact(name=name, abi=data["abi"], bytecode=bytecode)

"""Contract ABIs and bytecode, read from forge's build output (never hand-copied JSON).

`./dev build` also copies the ABI and bytecode of each of PROJECT_CONTRACTS into the package
(`python -m keepers.chain.artifacts`, into keepers/chain/compiled, git-ignored), so the wheel
carries them and an installed keepers deploys and decodes without forge or a source tree.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from keepers.toolchain import PACKAGED_ARTIFACTS, REPO_ROOT, ToolchainError, artifacts_dir

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
        # artifacts_dir() names contracts/out when the package has no copy either: say both.
        fell_back = root is None and base != PACKAGED_ARTIFACTS
        also = f", and no copy in the package ({PACKAGED_ARTIFACTS})" if fell_back else ""
        raise ToolchainError(
            f"no build output for {name} at {path}{also}: run `./dev build` (forge build), "
            "or set KEEPERS_ARTIFACTS to forge's out directory"
        )
    data = json.loads(path.read_text())
    bytecode = data.get("bytecode", {}).get("object", "")
    if not isinstance(data.get("abi"), list) or not bytecode:
        raise ToolchainError(f"{path} is not a forge artifact (abi or bytecode missing)")
    return Artifact(name=name, abi=data["abi"], bytecode=bytecode)


def package_artifacts(source: Path, dest: Path = PACKAGED_ARTIFACTS) -> list[Path]:
    """Copies the ABI and bytecode of each of PROJECT_CONTRACTS from forge's `source` directory
    to `dest` in the same layout (forge's files also hold sources, ASTs and metadata: 10x the
    size, none of it read); drops any other contract left there. Returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f"{n}.sol" for n in PROJECT_CONTRACTS}
    for stale in dest.iterdir():
        if stale.name in wanted:
            continue
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    written = []
    for name in PROJECT_CONTRACTS:
        art = load_artifact.__wrapped__(name, source)  # uncached: a rebuild may have changed it
        path = dest / f"{name}.sol" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"abi": art.abi, "bytecode": {"object": art.bytecode}}) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    # `./dev build` and the Dockerfile run this with a bare interpreter: stdlib only, from the
    # source tree (python -m keepers.chain.artifacts [FORGE_OUT]).
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "contracts" / "out"
    files = package_artifacts(out)
    print(f"{len(files)} contract artifacts in {PACKAGED_ARTIFACTS.relative_to(REPO_ROOT)}")


def abi_type(param: dict[str, Any]) -> str:
    """An ABI parameter's canonical type, as selectors and eth_abi need it (a struct spelled
    out as the tuple of its members' types)."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + kind.removeprefix("tuple")
    return kind

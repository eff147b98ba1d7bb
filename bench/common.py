"""What every benchmark records next to its figures: when, on what machine, with what versions."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from keepers.toolchain import find_tool

RESULTS = Path(__file__).resolve().parent / "results"


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def machine() -> dict[str, Any]:
    """Cores, memory, Python, package and tool versions."""
    anvil = subprocess.run(
        [str(find_tool("anvil")), "--version"], capture_output=True, text=True, check=False
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "web3": metadata.version("web3"),
        "anvil": anvil.stdout.splitlines()[0] if anvil.stdout else "unknown",
    }


def write_results(name: str, payload: dict[str, Any], markdown: str, directory: Path = RESULTS) -> Path:
    """Writes <directory>/<name>.json and .md; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    (directory / f"{name}.md").write_text(markdown)
    return path

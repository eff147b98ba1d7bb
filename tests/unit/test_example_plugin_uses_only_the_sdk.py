"""The example plugin (examples/margin-guard), strategy and tests, imports nothing of keepers but
keepers.sdk: the one face plugin authors get (tests/integration/test_example_plugin_from_the_wheel.py
runs it against the installed wheel)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from keepers.toolchain import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "margin-guard"


def keepers_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of keepers or keepers_workshop, or below them, in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from keepers import sdk` names keepers.sdk; `from keepers import testing` does not.
            modules = (
                [f"{node.module}.{alias.name}" for alias in node.names]
                if node.module == "keepers"
                else [node.module]
            )
        else:
            continue
        found += [(node.lineno, m) for m in modules if re.match(r"keepers(_workshop)?(\.|$)", m)]
    return found


def test_the_example_imports_only_keepers_sdk():
    sources = sorted(EXAMPLE.rglob("*.py"))
    assert {p.parent.name for p in sources} >= {"margin_guard", "tests"}, sources
    outside = [
        f"{p.relative_to(REPO_ROOT)}:{line}: {module}"
        for p in sources
        for line, module in keepers_imports(p)
        if not (module == "keepers.sdk" or module.startswith("keepers.sdk."))
    ]
    assert not outside, "the example reaches past keepers.sdk:\n" + "\n".join(outside)
    assert any(keepers_imports(p) for p in sources), "the example imports keepers.sdk at all"


def test_the_check_sees_what_it_must(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import keepers_workshop.testing\nfrom keepers import sdk, testing\n"
        "from keepers.sdk.testing import Devnet\n"
        "def f():\n    from keepers.engine.strategy import Strategy\n"
    )
    assert [m for _, m in keepers_imports(probe)] == [
        "keepers_workshop.testing",
        "keepers.sdk",
        "keepers.testing",
        "keepers.sdk.testing",
        "keepers.engine.strategy",
    ]

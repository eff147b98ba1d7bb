"""A third party's path, outside this repository: the two wheels built from this tree, keepers
and keepers-workshop (whose pytest plugin serves the `keepers_devnet` fixture), installed into a
fresh venv in a temporary directory with the locked dependencies and pytest; the example plugin
(examples/margin-guard) copied there, installed, and its tests run on anvil from PATH. Nothing of
the repository is reachable: no source tree on sys.path, no contracts/out, no KEEPERS_ARTIFACTS;
the contracts come from the keepers wheel. That wheel holds `keepers` and nothing else at the top
level, with the ABIs and bytecode the fixture deploys, and nothing of the workshop (no devnet,
local relay, replay or test harness, none of its dependencies, no pytest plugin): it is what the
production image installs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact
from keepers.toolchain import PACKAGED_ARTIFACTS, REPO_ROOT, find_tool

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "examples" / "margin-guard"
#: The locked pins' files, kept between runs so the install reads no index (about 10 s saved).
WHEELHOUSE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keepers" / "wheelhouse"
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache")


def lock_entries(lock: Path) -> dict[str, str]:
    """name -> the lock's whole entry (pin, marker, hashes), as `./dev lock` wrote it."""
    entries = {}
    for entry in re.split(r"\n(?=\S)", lock.read_text()):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", entry)
        if m:
            entries[canonicalize_name(m.group(1))] = entry.strip()
    return entries


def requirement_closure(name: str) -> set[str]:
    """`name` and everything it requires here, read from the dev venv (which is dev.lock)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = canonicalize_name(todo.pop())
        if dist in seen:
            continue
        seen.add(dist)
        for line in metadata.requires(dist) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    # The dev venv's pip drives the new venv (--python), which so needs no pip of its own.
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def build_wheel(tmp_path: Path) -> Path:
    """The keepers wheel of this tree, built from a copy (the tree gets no build/ or egg-info)."""
    assert (PACKAGED_ARTIFACTS / "OrderBook.sol" / "OrderBook.json").exists(), (
        f"no contract artifacts in {PACKAGED_ARTIFACTS}: run ./dev build"
    )
    for name in PROJECT_CONTRACTS:  # what the wheel will ship is what forge built last
        shipped = load_artifact(name, PACKAGED_ARTIFACTS)
        built = load_artifact(name, REPO_ROOT / "contracts" / "out")
        assert (shipped.abi, shipped.bytecode) == (built.abi, built.bytecode), (
            f"{name}: {PACKAGED_ARTIFACTS} is older than contracts/out: run ./dev build"
        )
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "keepers", src / "keepers", ignore=COPY_IGNORE)
    return _wheel(src, tmp_path / "dist", "keepers")


def build_workshop_wheel(tmp_path: Path) -> Path:
    """The keepers-workshop wheel of this tree's workshop/, built from a copy."""
    src = tmp_path / "workshop-src"
    shutil.copytree(REPO_ROOT / "workshop", src, ignore=COPY_IGNORE)
    return _wheel(src, tmp_path / "dist", "keepers_workshop")


def _wheel(src: Path, dist: Path, name: str) -> Path:
    built_wheel = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src))
    assert built_wheel.returncode == 0, built_wheel.stderr[-3000:]
    (wheel,) = dist.glob(f"{name}-*.whl")
    return wheel


def _entry_points(zf: zipfile.ZipFile) -> str:
    dist_info = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    return zf.read(dist_info).decode()


def _requires(zf: zipfile.ZipFile) -> set[str]:
    dist_info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    lines = zf.read(dist_info).decode().splitlines()
    return {
        canonicalize_name(Requirement(line.split(":", 1)[1]).name)
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }


#: The workshop's modules, as they were named when they lived in keepers.
WORKSHOP_IN_KEEPERS = ("keepers/devnet/", "keepers/relay/", "keepers/testing/", "keepers/replay.py")


def check_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/", 1)[0] for n in names}
        assert top == {"keepers", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(top)
        for name in PROJECT_CONTRACTS:
            art = json.loads(zf.read(f"keepers/chain/compiled/{name}.sol/{name}.json"))
            assert art["abi"], name
            assert art["bytecode"]["object"].startswith("0x"), name
        entry_points = _entry_points(zf)
        requires = _requires(zf)
    builtins = entry_points.split("[keepers.strategies]", 1)[1].split("\n[", 1)[0]
    targets = [line.split("=", 1)[1].strip() for line in builtins.strip().splitlines()]
    assert targets, entry_points
    assert all(t.startswith("keepers.strategies.") for t in targets), targets
    # The production wheel: nothing of the workshop, its dependencies or its plugins.
    assert not [n for n in names if n.startswith(WORKSHOP_IN_KEEPERS)], sorted(names)
    assert "pytest11" not in entry_points, entry_points
    assert "keepers.commands" not in entry_points, entry_points
    assert not requires & {"rich", "rlp", "requests", "pytest", "keepers-workshop"}, sorted(requires)


def check_workshop_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/", 1)[0] for n in names}
        entry_points = _entry_points(zf)
        requires = _requires(zf)
    assert top == {"keepers_workshop", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(top)
    assert {"keepers_workshop/devnet/run.py", "keepers_workshop/relay/server.py"} <= set(names)
    assert "keepers = keepers_workshop.testing.plugin" in entry_points
    assert "devnet = keepers_workshop.commands:devnet" in entry_points
    assert {"keepers", "rich"} <= requires, sorted(requires)


def install(env: Path, tmp_path: Path, wheels: list[Path]) -> None:
    """The wheels, runtime.lock, and the workshop's and pytest's pins from dev.lock, every
    file's hash checked, from the wheelhouse (filled from the index the first time, or when the
    locks move)."""
    runtime = lock_entries(REPO_ROOT / "requirements" / "runtime.lock")
    dev = lock_entries(REPO_ROOT / "requirements" / "dev.lock")
    ours = {"keepers", "keepers-workshop"}  # this tree's, from the wheels
    extra = (requirement_closure("keepers-workshop") | requirement_closure("pytest")) - runtime.keys() - ours
    deps = tmp_path / "deps.txt"
    deps.write_text("\n".join([*runtime.values(), *(dev[n] for n in sorted(extra))]) + "\n")
    project = tmp_path / "project.txt"
    project.write_text(
        "".join(
            f"{w.name.split('-', 1)[0].replace('_', '-')} @ {w.as_uri()} "
            f"--hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}\n"
            for w in wheels
        )
    )
    args = ["--python", str(env / "bin" / "python"), "install", "--no-deps", "--require-hashes"]
    offline = ["--no-index", "--find-links", str(WHEELHOUSE), "-r", str(deps), "-r", str(project)]
    done = pip(*args, *offline)
    if done.returncode != 0:
        fetched = pip("download", "--no-deps", "--require-hashes", "-d", str(WHEELHOUSE), "-r", str(deps))
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        done = pip(*args, *offline)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_example_plugin_passes_its_tests_against_the_installed_wheel(tmp_path: Path):
    wheel = build_wheel(tmp_path)
    check_wheel_contents(wheel)
    workshop = build_workshop_wheel(tmp_path)
    check_workshop_wheel_contents(workshop)

    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    install(env, tmp_path, [wheel, workshop])
    plugin = tmp_path / "margin-guard"
    shutil.copytree(EXAMPLE, plugin, ignore=COPY_IGNORE)
    py = ["--python", str(env / "bin" / "python")]
    installed = pip(*py, "install", "--no-deps", "--no-build-isolation", "--no-index", str(plugin))
    assert installed.returncode == 0, installed.stderr[-3000:]
    checked = pip(*py, "check")  # the locks cover what keepers, the workshop and the plugin need
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A third party's shell: the venv, forge and anvil, the system; no variable of ours.
    shell = {
        "PATH": os.pathsep.join([str(env / "bin"), str(find_tool("anvil").parent), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path),
    }
    where = subprocess.run(
        [str(env / "bin" / "python"), "-c",
         "import keepers, keepers.toolchain as t; print(keepers.__file__); print(t.artifacts_dir())"],
        env=shell, cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-3000:]
    module, artifacts = where.stdout.split()
    assert module.startswith(str(env)), module
    assert artifacts.startswith(str(env)), f"artifacts from {artifacts}, not the wheel"

    tests = subprocess.run(
        [str(env / "bin" / "pytest"), "-q", "-p", "no:cacheprovider"],
        env=shell, cwd=plugin, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert re.search(r"\b2 passed\b", tests.stdout), tests.stdout[-2000:]

"""Reproducible builds: pyproject.toml, the lock files, the venv, the Dockerfile and its
.dockerignore agree. No network: `./dev lock` rewrites the locks; this only reads files."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from keepers.toolchain import REPO_ROOT

DEV_LOCK = REPO_ROOT / "requirements" / "dev.lock"
RUNTIME_LOCK = REPO_ROOT / "requirements" / "runtime.lock"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
RELOCK = "pyproject.toml and the lock files disagree: run ./dev lock"


class Pin:
    def __init__(self, version: str, marker: str | None, hashes: int) -> None:
        self.version = Version(version)
        self.marker = Marker(marker) if marker else None
        self.hashes = hashes

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> dict[str, Pin]:
    """name -> Pin for each `name==version [; marker]` entry with its `--hash` lines."""
    pins: dict[str, Pin] = {}
    # Entries are separated by lines that start in column 0 (continuations are indented).
    for entry in re.split(r"\n(?=\S)", path.read_text()):
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split("\\", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*;\s*(.+))?", head)
        assert m, f"{path.name}: not a pinned requirement: {head!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Pin(m.group(2), m.group(3), entry.count("--hash=sha256:"))
    return pins


def direct(extra: str | None = None) -> list[Requirement]:
    deps = (
        PYPROJECT["project"]["optional-dependencies"][extra]
        if extra
        else PYPROJECT["project"]["dependencies"]
    )
    return [Requirement(d) for d in deps]


BUILD = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
#: The development workshop's own dependencies (keepers itself is this tree's).
WORKSHOP = [
    r
    for r in map(
        Requirement,
        tomllib.loads((REPO_ROOT / "workshop" / "pyproject.toml").read_text())["project"]["dependencies"],
    )
    if canonicalize_name(r.name) != "keepers"
]


def assert_pinned_in_range(reqs: list[Requirement], lock: Path) -> None:
    pins = read_lock(lock)
    for req in reqs:
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} is not in {lock.name}: {RELOCK}"
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{lock.name} pins {req.name}=={pin.version}, outside {req}: {RELOCK}"
        )


def test_every_direct_dependency_is_pinned_within_its_range():
    assert_pinned_in_range(direct() + BUILD, RUNTIME_LOCK)
    assert_pinned_in_range(direct() + direct("dev") + WORKSHOP + BUILD, DEV_LOCK)


def test_the_image_holds_none_of_the_workshops_own_dependencies():
    """runtime.lock carries what the runtime needs: a workshop dependency is in it only when the
    runtime's own dependencies need it too (rlp by eth-account, requests by web3), never the
    workshop's alone (rich, for the devnet's live view)."""
    runtime = read_lock(RUNTIME_LOCK)
    assert "rich" not in runtime, f"the devnet's live view is in the image: {RELOCK}"
    runtime_direct = {canonicalize_name(r.name) for r in direct()}
    assert not {"rich", "rlp", "pytest"} & runtime_direct, "workshop dependencies in keepers' own"


def test_the_extras_of_direct_dependencies_are_pinned_too():
    """`psycopg[binary]` needs psycopg-binary: read what each extra adds from the installed
    distribution's metadata (the venv is the lock's, see below)."""
    pins = read_lock(RUNTIME_LOCK)
    for req in direct():
        for extra in req.extras:
            for line in metadata.requires(req.name) or []:
                sub = Requirement(line)
                if (
                    sub.marker
                    and sub.marker.evaluate({"extra": extra})
                    and not sub.marker.evaluate({"extra": ""})
                ):
                    assert canonicalize_name(sub.name) in pins, f"{req} needs {sub.name}: {RELOCK}"


def test_the_image_runs_exactly_what_the_tests_run():
    """runtime.lock is dev.lock less the dev extra: same versions, nothing of its own."""
    dev, runtime = read_lock(DEV_LOCK), read_lock(RUNTIME_LOCK)
    for name, pin in runtime.items():
        assert name in dev, f"{name} is in runtime.lock, not dev.lock: {RELOCK}"
        assert dev[name].version == pin.version, (
            f"{name}: {pin.version} in the image, {dev[name].version} in tests"
        )
    dev_only = {canonicalize_name(r.name) for r in direct("dev")}
    assert not dev_only & runtime.keys(), f"dev tools in the image: {sorted(dev_only & runtime.keys())}"


@pytest.mark.parametrize("lock", [DEV_LOCK, RUNTIME_LOCK], ids=["dev", "runtime"])
def test_every_pin_has_hashes_and_the_lock_says_how_to_regenerate_it(lock: Path):
    assert "#    ./dev lock\n" in lock.read_text(), "written by hand? regenerate with ./dev lock"
    for name, pin in read_lock(lock).items():
        assert pin.hashes, f"{lock.name}: {name} has no --hash"


def test_the_venv_is_the_dev_lock():
    """./dev setup installs requirements/dev.lock: every pin that applies here is installed at
    its version (a stale venv, or a lock that pip did not install from, fails this)."""
    for name, pin in read_lock(DEV_LOCK).items():
        if not pin.applies_here():
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed: run ./dev setup")
        assert installed == pin.version, (
            f"{name} {installed} installed, {pin.version} locked: run ./dev setup"
        )


def test_dev_setup_and_the_dockerfile_install_from_the_locks():
    dev = (REPO_ROOT / "dev").read_text()
    assert "--require-hashes --no-deps -r requirements/dev.lock" in dev
    assert "-e . -e workshop " in dev, "./dev setup installs keepers and the workshop"
    assert "requirements/dev.lock" in re.search(r"setup_python\(\) \{.*?stale [^\n]*", dev, re.S).group(0), (
        "the venv's stamp must follow the lock"
    )
    assert "pip install --require-hashes --no-deps -r /src/requirements/runtime.lock" in DOCKERFILE
    assert "COPY requirements/runtime.lock" in DOCKERFILE
    # The project itself adds no dependency of its own resolving.
    project_installs = [
        line for line in DOCKERFILE.splitlines() if re.search(r"pip install .*/src( |$)", line)
    ]
    assert project_installs, "the Dockerfile installs the project"
    assert all("--no-deps" in line for line in project_installs), project_installs


def test_base_images_are_pinned_by_digest_and_node_is_a_maintained_lts():
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert froms
    for image in froms:
        assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), (
            f"not pinned by digest: {image}"
        )
    node = [i for i in froms if i.startswith("node:")]
    assert node, "the contracts stage runs on the node image"
    major = int(re.match(r"node:(\d+)", node[0]).group(1))
    # Even majors are the LTS lines; 20 reached its end of life in April 2026.
    assert major % 2 == 0, node[0]
    assert major >= 22, node[0]
    pythons = {i.split("@")[0] for i in froms if i.startswith("python:")}
    assert len(pythons) == 1, f"the build and runtime stages share one Python: {pythons}"
    assert next(iter(pythons)).startswith("python:3.11."), (
        "the locks are resolved for Python 3.11 (./dev lock)"
    )


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        rx = (
            re.escape(pattern)
            .replace(r"\*\*/", "(?:.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        rx = re.sub(r"\\\[(.*?)\\\]", r"[\1]", rx)
        if any(re.fullmatch(rx, c) for c in candidates):
            excluded = not negate
    return excluded


def test_the_build_context_has_what_the_dockerfile_copies_and_no_local_state():
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [
        src
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for src in line.split()[1:-1]
    ]
    assert copies
    needed = [c.rstrip("/") for c in copies] + [
        "contracts/foundry.toml",
        "contracts/src",
        "contracts/node_modules",  # the tracked symlink forge's remappings go through
        "keepers/cli.py",
        "tools/solc",
    ]
    for path in needed:
        assert not dockerignored(path, patterns), f".dockerignore leaves out {path}, which the build needs"
    for path in [
        ".git",
        ".venv",
        ".tools-venv",
        "node_modules",
        "contracts/out",
        "contracts/cache",
        "keepers/chain/compiled",  # the image writes its own from the contracts stage
        "bench",  # periphery: run from the repository, never in the image
        "workshop",  # periphery: the devnet, local relay, replay and test harness (keepers-workshop)
        "workshop/keepers_workshop/devnet/run.py",
        ".devnet",
        "keepers/__pycache__",
        "keepers/chain/__pycache__/x.cpython-311.pyc",
        "keepers.egg-info",
        ".mypy_cache",
        ".pytest_cache",
        "tests",
        "helm",
        "config",
        "examples",
    ]:
        assert dockerignored(path, patterns), f".dockerignore lets {path} into the build context"

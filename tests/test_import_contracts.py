"""The rooms' import contracts hold, and they bite: a forbidden import fails `lint-imports`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(package_parent: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the project's contracts over the `esper` under `package_parent`."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _copy_of_the_package(tmp_path: Path) -> Path:
    parent = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "esper", parent / "esper",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return parent


def test_the_algorithm_importing_the_environment_breaks_the_build(tmp_path: Path) -> None:
    parent = _copy_of_the_package(tmp_path)
    assert _lint(parent, tmp_path).returncode == 0  # the copy as it is keeps every contract
    policy = parent / "esper" / "rl" / "policy.py"
    policy.write_text(
        policy.read_text(encoding="utf-8") + "\nfrom esper.morpho.actions import HEAD_NAMES\n",
        encoding="utf-8",
    )
    proc = _lint(parent, tmp_path)
    assert proc.returncode != 0
    assert "esper.rl.policy -> esper.morpho.actions" in proc.stdout
    assert "The algorithm (esper.rl) never imports the environment" in proc.stdout


def test_the_dashboard_importing_the_algorithm_breaks_the_build(tmp_path: Path) -> None:
    parent = _copy_of_the_package(tmp_path)
    schema = parent / "esper" / "sanctum" / "schema.py"
    schema.write_text(
        schema.read_text(encoding="utf-8") + "\nimport esper.rl.ppo\n", encoding="utf-8"
    )
    proc = _lint(parent, tmp_path)
    assert proc.returncode != 0
    assert "esper.sanctum.schema -> esper.rl.ppo" in proc.stdout

"""The layers' contracts ([tool.importlinter] in pyproject.toml), run by import-linter: the
tree keeps them, and each contract breaks when a module steps over its line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "task_plugins", "tunery_client")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the packages under root, with root's pyproject.toml."""
    script = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(script), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_every_layer_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_each_contract_breaks_when_a_module_steps_over_its_line(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    steps = {
        "app/_trains.py": "import torch\n",
        "tunery_client/_server.py": "from app import settings\n",
        "worker/_route.py": "from app.deps import SessionDep\n",
        # web code that app grows later is caught through FastAPI, without a list to update
        "app/files/_web.py": "import fastapi\n",
        "worker/_web.py": "import app.files._web\n",
    }
    for name, source in steps.items():
        (tmp_path / name).write_text(source)

    result = lint_imports(tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "Contracts: 0 kept, 3 broken." in report, report
    assert "app._trains -> torch" in report
    assert "tunery_client._server -> app.settings" in report
    assert "worker._route -> app.deps" in report
    assert "worker._web -> app.files._web" in report

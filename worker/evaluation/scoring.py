"""Score a loaded model on dataset rows (its task's scorer, task_plugins/*/scoring.py), and
compare two models' scores. Pure ML: no HTTP, Celery or SQL."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import task_plugins
from worker.inference.loading import LoadedModel

BATCH_SIZE = 16

Row = dict[str, Any]


def score(model: LoadedModel, rows: Sequence[Row]) -> dict[str, Any]:
    scorer: Callable[[LoadedModel, Sequence[Row]], dict[str, Any]] = task_plugins.load_hook(
        task_plugins.get(model.spec.task).scorer
    )
    return scorer(model, rows)


def difference(model: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """model minus other for every number both have (per-class scores included)."""
    result: dict[str, Any] = {}
    for key, value in model.items():
        theirs = other.get(key)
        if _number(value) and _number(theirs):
            assert theirs is not None
            result[key] = float(value) - float(theirs)
        elif key == "per_class" and isinstance(value, dict) and isinstance(theirs, dict):
            per_class = {
                label: difference(scores, theirs[label])
                for label, scores in value.items()
                if isinstance(scores, dict) and isinstance(theirs.get(label), dict)
            }
            result[key] = {
                label: {k: v for k, v in d.items() if k != "support"}
                for label, d in per_class.items()
            }
    return result


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )

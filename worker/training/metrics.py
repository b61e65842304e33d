"""Evaluation figures as events carry them; each task computes its own (task_plugins/*)."""

from __future__ import annotations

from typing import Any

import task_plugins

IGNORE_INDEX = -100
# Trainer bookkeeping that is not a metric of the model.
_NOT_METRICS = {"runtime", "samples_per_second", "steps_per_second", "model_preparation_time"}


# evaluation fields that quote the user's examples (an archive's file names): the project
# sees them through the API, but they stay out of the tunery.json that travels with a
# downloaded or exported model
EXAMPLE_FIELDS = frozenset({"misclassified"})


def manifest_metrics(fields: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's fields as a model's tunery.json carries them."""
    return {name: value for name, value in fields.items() if name not in EXAMPLE_FIELDS}


def eval_fields(metrics: dict[str, Any], task: str) -> dict[str, Any]:
    """The Trainer's eval metrics ("eval_accuracy", ...) as the fields of an eval event, with
    the figures the task derives from them (a causal LM's perplexity)."""
    fields: dict[str, Any] = {}
    for key, value in metrics.items():
        if not key.startswith("eval_"):
            continue
        name = key.removeprefix("eval_")
        if name in _NOT_METRICS:
            continue
        fields["eval_loss" if name == "loss" else name] = value
    fields.update(task_plugins.get(task).metrics.derive(fields))
    return fields

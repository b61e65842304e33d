"""The task plugins' predictor hooks as the inference server calls them
(task_plugins/base.py: PredictorHook). What a request may carry, which engine serves a base,
and how a micro-batch is prepared, run and finished come from the plugin of the model's
task; nothing in worker/inference names a task."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import task_plugins
from task_plugins.base import PredictorHook, load_hook
from worker.inference.predictors import PredictionInputError

# how each kind of input item is written, for error messages
INPUT_FORMS = {
    "text": "plain strings",
    "chat": 'items {"messages": [...]}',
    "image": 'items {"image": "<base64 or data: URL>"}',
    "audio": 'items {"audio": "<base64 or data: URL>"}',
}


@dataclass(frozen=True)
class BatchHooks:
    """A "batch" engine's three hooks, imported."""

    prepare: Callable[[Any, Sequence[Any], Any], list[Any]]
    forward: Callable[[Any, Any, Sequence[Any], int, Mapping[str, Any]], torch.Tensor]
    finish: Callable[[Sequence[float], Sequence[str], int | None], Any]


def predictor(task: str) -> PredictorHook:
    return task_plugins.get(task).predictor


@functools.cache
def batch_hooks(task: str) -> BatchHooks:
    hook = predictor(task)
    if hook.engine != "batch" or not (hook.prepare and hook.forward and hook.finish):
        raise ValueError(f"{task} models are not served by micro-batching ({hook.engine})")
    return BatchHooks(load_hook(hook.prepare), load_hook(hook.forward), load_hook(hook.finish))


def input_kind(item: Any) -> str | None:
    if isinstance(item, str):
        return "text"
    if isinstance(item, Mapping):
        if "messages" in item:
            return "chat"
        if set(item) in ({"image"}, {"audio"}):
            return str(next(iter(item)))
    return None


def check_request(
    task: str, inputs: Sequence[Any], parameters: Mapping[str, Any], stream: bool = False
) -> None:
    """Refuse what the task would ignore or cannot read, before paying for a load."""
    hook = predictor(task)
    if stream and not hook.streams:
        raise PredictionInputError(
            f"stream applies to models that generate text (causal-lm); this one does {task}",
            param="stream",
            code="unsupported_parameter",
        )
    for name, value in parameters.items():
        if value is not None and name not in hook.parameters:
            raise PredictionInputError(
                f"parameter {name!r} does not apply to task {task!r}; "
                f"allowed: {', '.join(sorted(hook.parameters))}",
                param=f"parameters.{name}",
                code="unsupported_parameter",
            )
    for index, item in enumerate(inputs):
        if input_kind(item) not in hook.inputs:
            forms = " or ".join(INPUT_FORMS[kind] for kind in sorted(hook.inputs))
            article = "an" if task[:1] in "aeiou" else "a"
            raise PredictionInputError(
                f"inputs[{index}]: {article} {task} model takes {forms}", code="unsupported_input"
            )

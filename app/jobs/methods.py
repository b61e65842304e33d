"""The training method of a job request: which one, whether the base model's task has it,
and its own settings resolved ("auto" and defaults) as the trainer reads them."""

from __future__ import annotations

from typing import Any

import task_plugins
from app.failures import APIError
from app.jobs.schemas import DpoHyperparameters, JobCreate
from app.jobs.spec import DPO_SETTINGS, DpoMethod


def method_of(request: JobCreate) -> str:
    return request.method.type if request.method is not None else task_plugins.SUPERVISED


def check_method(method: str, task: str, model: str) -> None:
    """A 400 when the base model's task has no such method (DPO on a classifier)."""
    plugin = task_plugins.get(task)
    if method in plugin.methods:
        return
    takers = [t.name for t in task_plugins.TASKS if method in t.methods]
    raise APIError(
        400,
        f"method.type {method!r} trains {' or '.join(takers)} models, and {model} is a {task} "
        f"model; choose a causal language model (a decoder such as Llama, Qwen or GPT-2) for "
        f"{method}, or use method.type 'supervised' on {model}.",
        param="method.type",
        code="invalid_method",
    )


# supervised options that mean nothing to DPO (its loss is on the answers; the chosen and
# rejected sequences are padded into one batch)
_NOT_FOR_DPO = ("train_on_inputs", "packing")


def check_dpo_options(request: JobCreate) -> None:
    """A 400 for a supervised-only option set on a DPO job."""
    if method_of(request) != task_plugins.DPO:
        return
    asked = request.requested_hyperparameters()
    for name in _NOT_FOR_DPO:
        if getattr(asked, name) is True:
            raise APIError(
                400,
                f"method.dpo.hyperparameters.{name} does not apply to DPO, which takes its loss "
                "on the preferred and non-preferred answers; leave it out.",
                param=f"method.dpo.hyperparameters.{name}",
            )


def method_settings(request: JobCreate) -> dict[str, Any]:
    """The method's own settings with their values for this job (none for supervised)."""
    if method_of(request) != task_plugins.DPO:
        return {}
    asked = request.requested_hyperparameters()
    assert isinstance(asked, DpoHyperparameters)
    defaults = DpoMethod(type="dpo")
    given = {
        "beta": None if asked.beta == "auto" else asked.beta,
        "loss_type": asked.loss_type,
        "sft_weight": asked.sft_weight,
    }
    return {
        name: getattr(defaults, name) if given[name] is None else given[name]
        for name in DPO_SETTINGS
    }


def stored_method(
    method: str, hyperparameters: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """The job's `method` as OpenAI shows it: the settings among the hyperparameters."""
    return {"type": method, method: {"hyperparameters": {**hyperparameters, **settings}}}

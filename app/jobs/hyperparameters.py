"""A job's hyperparameters resolved: "auto" and what the request left out get the job's
task's defaults (task_plugins), and the result is validated as the trainer will read it
(app/jobs/spec.py)."""

from __future__ import annotations

from typing import Any

import task_plugins
from app.failures import APIError
from app.jobs.schemas import Hyperparameters
from app.jobs.spec import Hyperparameters as TrainerHyperparameters
from app.jobs.spec import JobHyperparameters, task_problems

# Base learning rates per (task, training type), from each task's plugin;
# learning_rate_multiplier scales these.
BASE_LEARNING_RATE = {
    (task.name, kind): rate
    for task in task_plugins.TASKS
    for kind, rate in task.base_learning_rates.items()
}
DEFAULT_N_EPOCHS = 3
DEFAULT_MAX_SEQ_LENGTH = 256
DEFAULT_VALIDATION_SPLIT = 0.1
# "auto" n_epochs (OpenAI's rule): 3 epochs, more for small files so that about 100 examples
# are seen in all, fewer for big ones so that about 25000 are, within 1..25.
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
# Defaults of the optional hyperparameters (docs/training.md), written onto every job: the
# trainer's own defaults (app/jobs/spec.py).
DEFAULT_OPTIONS: dict[str, Any] = {
    name: TrainerHyperparameters.model_fields[name].default
    for name in (
        "gradient_accumulation_steps",
        "lr_scheduler",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "eval_steps",
        "checkpoint_steps",
        "logging_steps",
        "early_stopping",
        "best_metric",
        "gradient_checkpointing",
        "packing",
    )
}


def auto_n_epochs(n_train: int) -> int:
    if n_train <= 0:
        return DEFAULT_N_EPOCHS
    if n_train * DEFAULT_N_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, MIN_TARGET_EXAMPLES // n_train)
    if n_train * DEFAULT_N_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_train)
    return DEFAULT_N_EPOCHS


def resolve_hyperparameters(
    asked: Hyperparameters,
    task: str,
    training_type: str,
    n_train: int,
    method: str = task_plugins.SUPERVISED,
) -> dict[str, Any]:
    """Every hyperparameter with its value for this job ("auto" and defaults resolved),
    validated as the trainer will read it."""
    plugin = task_plugins.get(task)
    multiplier = 1.0 if asked.learning_rate_multiplier == "auto" else asked.learning_rate_multiplier
    base_lr = plugin.base_learning_rate(training_type, method)
    learning_rate = asked.learning_rate if asked.learning_rate is not None else base_lr * multiplier
    if learning_rate <= 0:
        # a multiplier so small that the product underflows: nothing would train
        raise APIError(
            400,
            f"hyperparameters.learning_rate_multiplier {multiplier:g} times the base learning "
            f"rate {base_lr:g} is 0 in floating point; use a multiplier of at least 1e-300.",
            param="hyperparameters.learning_rate_multiplier",
        )
    validation_split = asked.validation_split or DEFAULT_VALIDATION_SPLIT
    resolved: dict[str, Any] = {
        "n_epochs": auto_n_epochs(n_train) if asked.n_epochs == "auto" else asked.n_epochs,
        "batch_size": plugin.default_batch_size if asked.batch_size == "auto" else asked.batch_size,
        "learning_rate_multiplier": learning_rate / base_lr,
        "learning_rate": learning_rate,
        "max_seq_length": asked.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        "validation_split": validation_split,
    }
    given = asked.model_dump(exclude_unset=True)
    for name, default in DEFAULT_OPTIONS.items():
        value = given.get(name, default)
        resolved[name] = default if value is None else value
    if resolved["eval_steps"] == "epoch":
        resolved["eval_steps"] = None
    if resolved["packing"] == "auto":
        resolved["packing"] = None
    if asked.early_stopping is not None:
        # written back whole, the metric resolved (it defaults to best_metric, then eval_loss)
        early = asked.early_stopping.model_dump()
        early["metric"] = early["metric"] or resolved["best_metric"] or "eval_loss"
        resolved["early_stopping"] = early
    # the hyperparameters only some tasks take: this task's get their value or default,
    # the others' are checked below (given to a task that does not take them: refused)
    for name, default in plugin.hyperparameters.items():
        value = given.get(name)
        resolved[name] = default if value is None else value
    for name in {n for t in task_plugins.TASKS for n in t.hyperparameters} - set(resolved):
        value = given.get(name)
        if value is not None and value != TrainerHyperparameters.model_fields[name].default:
            resolved[name] = value
    checked = JobHyperparameters.model_validate(resolved)
    for problem in task_problems(task, checked, method):
        param = "hyperparameters." + ".".join(problem.path)
        raise APIError(400, f"{param} {problem.message}", param=param)
    # exactly what the trainer parses: the values as validated, the keys as resolved
    return checked.model_dump(exclude_unset=True)

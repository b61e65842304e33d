"""Every value of a spec the trainer parses reaches what trains with it: the Trainer's
arguments, the schedule (evaluations, checkpoints, best checkpoint, early stopping) and
peft's LoRA config. Drawn over every field's whole range (tests/support/strategies.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import task_plugins
from app.jobs.spec import Hyperparameters, LoraType, TrainingType, parse_spec, task_problems
from tests.support.strategies import from_annotation, models
from worker.training.recipes import lora_config
from worker.training.run import training_arguments
from worker.training.schedule import TrainingSchedule

EXAMPLES = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    # tmp_path only names the spec's folders: nothing is written there
    suppress_health_check=[
        HealthCheck.filter_too_much,
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
    ],
)


def spec_of(tmp: Path, task: str, hp: dict[str, Any], training_type: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "task": task,
            "base_model_dir": str(tmp / "base"),
            "train_file": {"path": str(tmp / "train.jsonl")},
            "output_dir": str(tmp / "work"),
            "events_path": str(tmp / "work" / "events.jsonl"),
            "seed": 11,
            "hyperparameters": hp,
            "training_type": training_type,
        }
    )


@EXAMPLES
@given(
    task=st.sampled_from(task_plugins.names()),
    hp=models(Hyperparameters),
    n_train=st.integers(min_value=1, max_value=5000),
)
def test_the_trainer_arguments_and_schedule_take_every_value(
    tmp_path: Path, task: str, hp: dict[str, Any], n_train: int
) -> None:
    parsed = Hyperparameters.model_validate(hp)
    assume(not task_problems(task, parsed))
    spec = spec_of(tmp_path, task, hp, {"type": "full"})
    h = spec.hyperparameters
    args = training_arguments(spec, n_train)
    assert args.num_train_epochs == h.n_epochs
    assert args.per_device_train_batch_size == h.batch_size
    assert args.per_device_eval_batch_size == h.batch_size
    assert args.gradient_accumulation_steps == h.gradient_accumulation_steps
    assert args.learning_rate == h.learning_rate
    assert args.weight_decay == h.weight_decay
    assert args.warmup_steps == h.warmup_ratio
    assert args.max_grad_norm == h.max_grad_norm
    scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if h.lr_scheduler == "constant" and h.warmup_ratio > 0:
        assert scheduler == "constant_with_warmup"
    else:
        assert scheduler == h.lr_scheduler
    if h.logging_steps is not None:
        assert args.logging_steps == h.logging_steps
    assert args.activation_checkpointing == h.gradient_checkpointing
    assert args.seed == args.data_seed == spec.seed

    schedule = TrainingSchedule(h, task, lambda: False, lambda event: None)
    assert schedule.eval_steps == h.eval_steps
    assert schedule.checkpoint_steps == h.checkpoint_steps
    # no best_metric and no early stopping: no selection, the final model is exported
    assert schedule.selection_metric == (
        h.best_metric
        if h.best_metric is not None
        else (schedule.monitored if h.early_stopping is not None else None)
    )
    assert schedule.early_stopping == h.early_stopping
    assert schedule.monitored == (
        h.early_stopping.metric
        if h.early_stopping and h.early_stopping.metric
        else h.best_metric or "eval_loss"
    )


@EXAMPLES
@given(
    task=st.sampled_from(task_plugins.names()),
    training_type=from_annotation(TrainingType),
    model_type=st.sampled_from(["llama", "bert", "no-peft-default"]),
)
def test_the_lora_config_takes_every_value(
    tmp_path: Path, task: str, training_type: dict[str, Any], model_type: str
) -> None:
    assume(training_type["type"] in ("lora", "qlora"))
    try:
        spec = spec_of(tmp_path, task, {}, training_type)
    except Exception:
        assume(False)  # a value the spec refuses (the API refuses it too)
        raise
    kind = spec.training_type
    assert isinstance(kind, LoraType)
    config = lora_config(kind, task, model_type)
    assert config.r == kind.r
    assert config.lora_alpha == kind.alpha and type(config.lora_alpha) is type(kind.alpha)
    assert config.lora_dropout == kind.dropout
    if kind.target_modules is None:
        assert config.target_modules in (None, "all-linear")
    elif isinstance(kind.target_modules, list):
        assert config.target_modules == set(kind.target_modules)
    else:
        assert config.target_modules == kind.target_modules

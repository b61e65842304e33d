"""The job spec is defined once: a value the API accepts is a value the trainer trains with.

Every field of a request's hyperparameters and training type is drawn within its declared
range (tests/support/strategies.py reads the models), resolved as the API resolves it,
handed over as the supervisor hands it (the job's row, the spec file's JSON) and parsed as
the trainer parses it. What the API refuses for the job's task, the trainer refuses too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import task_plugins
from app.failures import APIError, Failure
from app.jobs import hyperparameters, schemas
from app.jobs.spec import (
    TrainingType,
    TrainSpec,
    dump_spec,
    parse_spec,
    trainer_hyperparameters,
)
from tests.support.strategies import from_annotation, models

EXAMPLES = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
TRAINING_TYPE: TypeAdapter[Any] = TypeAdapter(TrainingType)


def supervisor_spec(
    task: str, hyperparameters: dict[str, Any], training_type: dict[str, Any]
) -> dict[str, Any]:
    """The spec as worker/supervisor/prepare.py builds it from the job's row."""
    return {
        "job_id": "ftjob-x",
        "task": task,
        "base_model_dir": "/models/base",
        "train_file": {"path": "/data/train.jsonl", "filename": "train.jsonl"},
        "validation_file": None,
        "output_dir": "/work/x",
        "events_path": "/work/x/events.jsonl",
        "seed": 7,
        "hyperparameters": trainer_hyperparameters(hyperparameters),
        "training_type": dict(training_type),
        "processes": 1,
        "resume": False,
    }


def as_the_trainer_reads_it(raw: dict[str, Any]) -> TrainSpec:
    """Through the spec file: written by the supervisor, read by the trainer child."""
    spec = parse_spec(raw)
    reread = parse_spec(json.loads(dump_spec(spec)))
    assert reread == spec
    return reread


def same(value: Any, other: Any) -> bool:
    """Equal, and a float stays a float (16.5 never becomes 16)."""
    if isinstance(value, float) or isinstance(other, float):
        return isinstance(other, float) and float(value) == other
    return bool(value == other) and type(value) is type(other)


@EXAMPLES
@given(
    task=st.sampled_from(task_plugins.names()),
    asked=models(schemas.Hyperparameters),
    training_type=from_annotation(TrainingType),
    n_train=st.integers(min_value=1, max_value=100_000),
)
def test_what_the_api_accepts_the_trainer_trains_with(
    task: str, asked: dict[str, Any], training_type: dict[str, Any], n_train: int
) -> None:
    try:
        request = schemas.Hyperparameters.model_validate(asked)
        kind = TRAINING_TYPE.validate_python(training_type)
    except ValidationError:
        assume(False)  # refused at the request's edge: never reaches a job
        raise
    stored_type = kind.model_dump()
    try:
        resolved = hyperparameters.resolve_hyperparameters(request, task, kind.type, n_train)
    except APIError as refusal:
        # refused for this task: the trainer, given the same values, refuses them alike
        given_values = {
            k: v
            for k, v in request.model_dump().items()
            if k in request.model_fields_set
            and v not in (None, "auto", "epoch")
            and k != "learning_rate_multiplier"
        }
        if request.learning_rate_multiplier != "auto":
            base = task_plugins.get(task).base_learning_rate(kind.type)
            given_values["learning_rate"] = base * request.learning_rate_multiplier
        with pytest.raises(Failure) as caught:
            parse_spec(supervisor_spec(task, given_values, stored_type))
        assert caught.value.code == "invalid_spec"
        assert refusal.param is not None
        refused = refusal.param.split(".")[1]
        # the multiplier reaches the trainer as the learning rate it gives
        assert caught.value.param == {"learning_rate_multiplier": "learning_rate"}.get(
            refused, refused
        )
        return
    spec = as_the_trainer_reads_it(supervisor_spec(task, resolved, stored_type))
    trained = spec.hyperparameters

    # every value the job shows is the one the trainer has, of the same type
    for name, value in trainer_hyperparameters(resolved).items():
        have = getattr(trained, name)
        if name == "early_stopping" and value is not None:
            assert have is not None and have.model_dump() == value
        else:
            assert same(value, have), (name, value, have)
    # and every value the user gave is the one the job shows
    for name in request.model_fields_set:
        value = getattr(request, name)
        if value is None or value == "auto" or name == "learning_rate_multiplier":
            continue
        if name == "eval_steps" and value == "epoch":
            assert trained.eval_steps is None
        elif name == "early_stopping":
            assert trained.early_stopping is not None
            assert trained.early_stopping.patience == value.patience
            assert same(value.min_delta, trained.early_stopping.min_delta)
            assert trained.early_stopping.relative is value.relative
            assert trained.early_stopping.metric == (
                value.metric or trained.best_metric or "eval_loss"
            )
        else:
            assert same(value, getattr(trained, name)), (name, value, getattr(trained, name))
    if request.learning_rate is None:
        multiplier = request.learning_rate_multiplier
        base = task_plugins.get(task).base_learning_rate(kind.type)
        assert trained.learning_rate == base * (1.0 if multiplier == "auto" else multiplier)
    # the training type arrives field by field
    for name, value in stored_type.items():
        assert same(value, getattr(spec.training_type, name)), (name, value)


@EXAMPLES
@given(training_type=from_annotation(TrainingType))
def test_a_training_type_the_api_stores_is_the_trainers(training_type: dict[str, Any]) -> None:
    try:
        kind = TRAINING_TYPE.validate_python(training_type)
    except ValidationError:
        assume(False)
        raise
    stored = json.loads(json.dumps(kind.model_dump()))  # the job row is JSON
    spec = as_the_trainer_reads_it(supervisor_spec("classification", {}, stored))
    assert spec.training_type.model_dump() == kind.model_dump()


@pytest.mark.parametrize("alpha", [16.5, 0.5, 4096.0])
def test_lora_alpha_is_a_float_end_to_end(alpha: float) -> None:
    # the trainer once read alpha with int(): 16.5 trained as 16, and 0.5 failed at run time
    request = schemas.JobCreate.model_validate(
        {"model": "m", "training_file": "f", "training_type": {"type": "lora", "alpha": alpha}}
    )
    assert request.training_type is not None
    spec = as_the_trainer_reads_it(
        supervisor_spec("causal-lm", {}, request.training_type.model_dump())
    )
    assert spec.training_type.type == "lora"
    assert spec.training_type.alpha == alpha and isinstance(spec.training_type.alpha, float)


def test_the_spec_refuses_what_the_api_refuses() -> None:
    raw = supervisor_spec("classification", {"max_seq_length": 6}, {"type": "lora"})
    with pytest.raises(Failure) as caught:
        parse_spec(raw)
    assert caught.value.code == "invalid_spec" and caught.value.param == "max_seq_length"
    assert ">= 8" in caught.value.message
    raw = supervisor_spec("classification", {}, {"type": "lora", "alpha": 0})
    with pytest.raises(Failure) as caught:
        parse_spec(raw)
    assert caught.value.param == "training_type"
    unknown = {**supervisor_spec("classification", {}, {"type": "full"}), "task": "vision"}
    with pytest.raises(Failure) as caught:
        parse_spec(unknown)
    assert caught.value.param == "task" and "classification, causal-lm" in caught.value.message

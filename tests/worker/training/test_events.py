"""The trainer's event protocol: what the emitters write is what the supervisor parses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.worker.training.conftest import make_spec, sentiment_rows
from worker.training import run
from worker.training.events import (
    Checkpoint,
    EarlyStopped,
    Eval,
    Failed,
    Log,
    Message,
    Paused,
    Progress,
    Started,
    Succeeded,
    TrainerEvent,
    parse_event,
    to_line,
)

ONE_OF_EACH: list[TrainerEvent] = [
    Started(
        total_steps=6,
        n_train=20,
        n_validation=4,
        n_truncated=0,
        trainable_parameters=10,
        total_parameters=100,
    ),
    Progress(step=1, total_steps=6, epoch=0.5),
    Log(
        step=1,
        epoch=0.5,
        train_loss=0.7,
        learning_rate=1e-4,
        grad_norm=None,
        tokens_per_second=None,
    ),
    Eval.of(3, 1.0, {"eval_loss": 0.5, "accuracy": 0.75, "per_class": {"a": {"f1": 1.0}}}),
    Checkpoint(step=3, epoch=1.0, dir="outbox/step-3", metrics={"step": 3}, best_step=3),
    Message(level="warning", message="2 of 24 rows are longer than max_seq_length"),
    EarlyStopped(
        step=6,
        metric="eval_loss",
        value=0.6,
        best_value=0.5,
        patience=1,
        min_delta=0.01,
        relative=True,
        best_step=3,
        message="Early stopping at step 6",
    ),
    Paused(step=4),
    Succeeded(
        trained_tokens=900,
        metrics={"eval_loss": 0.5},
        result_step=3,
        result_reason="best_metric",
        best_step=3,
    ),
    Succeeded(
        trained_tokens=900,
        metrics={"eval_loss": 0.6},
        result_step=6,
        result_reason="final",
        best_step=None,
    ),
    Failed(code="nan_loss", message="training diverged", param="hyperparameters"),
]


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda event: event.type)
def test_every_event_survives_the_wire(event: TrainerEvent) -> None:
    line = to_line(event)
    assert next(iter(json.loads(line))) == "type"  # type first, as docs/internals.md shows
    parsed = parse_event(line)
    assert type(parsed) is type(event) and parsed.wire() == event.wire()


def test_absent_optional_fields_stay_absent() -> None:
    final = Succeeded(
        trained_tokens=1, metrics={}, result_step=1, result_reason="final", best_step=None
    )
    assert "stopped_early" not in final.wire()
    early = Succeeded(
        trained_tokens=1,
        metrics={},
        result_step=1,
        result_reason="early_stopping",
        best_step=1,
        stopped_early={"step": 1},
    )
    assert early.wire()["stopped_early"] == {"step": 1}


def test_nan_and_infinity_are_written_as_null() -> None:
    event = Eval.of(1, 1.0, {"eval_loss": math.nan, "perplexity": math.inf})
    assert json.loads(to_line(event)) == {
        "type": "eval",
        "step": 1,
        "epoch": 1.0,
        "eval_loss": None,
        "perplexity": None,
    }


@pytest.mark.parametrize(
    "line",
    [
        '{"type": "progress", "step": 1, "total_steps": 2, "epoch": 1.0, "eta": 3}',
        '{"type": "telemetry", "step": 1}',
        '{"step": 1}',
        '{"type": "failed", "code": "x"}',
        "not json",
    ],
)
def test_a_line_outside_the_protocol_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_event(line)


def test_a_training_run_speaks_only_the_protocol(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows(), n_epochs=1)
    events: list[dict[str, Any]] = []
    run.train(spec, events.append)
    kinds = [type(parse_event(event)) for event in events]
    assert kinds[0] is Started and kinds[-1] is Succeeded
    assert {Progress, Log, Eval, Checkpoint} <= set(kinds)
    assert all(parse_event(event).wire() == event for event in events)

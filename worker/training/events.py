"""The trainer's events: one typed protocol for the trainer child that writes them and the
supervisor that reads them. Torch-free (both import it).

On the wire each event is one JSON object per line of events.jsonl (docs/internals.md pins
the fields), `type` first; NaN and infinity are written as null. The emitters build these
classes; the supervisor parses each line back into one (`parse_event`) and dispatches on
the class, so neither side matches on strings.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from app.jobs.spec import ResultReason


class _Event(BaseModel):
    # a field the other side does not know is a bug in one of them, not something to drop
    model_config = ConfigDict(extra="forbid")

    # each event narrows it to its own Literal
    type: str

    def wire(self) -> dict[str, Any]:
        """The event as written: `type` first, fields given at construction, JSON-safe."""
        fields = self.model_dump(exclude_unset=True, exclude={"type"})
        return dict(json_safe({"type": self.type, **fields}))


class Started(_Event):
    type: Literal["started"] = "started"
    total_steps: int
    n_train: int
    n_validation: int
    # rows cut to max_seq_length (also said in a warning message)
    n_truncated: int
    trainable_parameters: int
    total_parameters: int


class Progress(_Event):
    """After every optimizer step."""

    type: Literal["progress"] = "progress"
    step: int
    total_steps: int
    epoch: float | None


class Log(_Event):
    """The training loss every logging_steps steps and at every checkpoint; a method's own
    figures (DPO's reward_*) as further fields."""

    model_config = ConfigDict(extra="allow")

    type: Literal["log"] = "log"
    step: int
    epoch: float | None
    train_loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_second: float | None


class Eval(_Event):
    """An evaluation: eval_loss, and the task's own figures as further fields."""

    model_config = ConfigDict(extra="allow")

    type: Literal["eval"] = "eval"
    step: int
    epoch: float | None
    eval_loss: float | None = None

    @classmethod
    def of(cls, step: int, epoch: float | None, figures: dict[str, Any]) -> Eval:
        """An evaluation with its figures (eval_loss and the task's own)."""
        return cls.model_validate({"step": step, "epoch": epoch, **figures})


class Checkpoint(_Event):
    """A finished checkpoint, handed over in `dir` (relative to the output dir)."""

    type: Literal["checkpoint"] = "checkpoint"
    step: int
    epoch: float | None
    dir: str
    metrics: dict[str, Any]
    best_step: int | None


class Message(_Event):
    type: Literal["message"] = "message"
    level: Literal["info", "warning", "error"]
    message: str


class EarlyStopped(_Event):
    type: Literal["early_stopped"] = "early_stopped"
    step: int
    metric: str
    value: float | None
    best_value: float | None
    patience: int
    min_delta: float
    # min_delta is a fraction of best_value (else in the metric's units)
    relative: bool
    best_step: int | None
    message: str


class Paused(_Event):
    """A pause was requested; the checkpoint of `step` is in the outbox; nothing exported."""

    type: Literal["paused"] = "paused"
    step: int


class Succeeded(_Event):
    type: Literal["succeeded"] = "succeeded"
    # non-padding tokens over all epochs (a resumed run included)
    trained_tokens: int
    # the exported checkpoint's evaluation fields
    metrics: dict[str, Any]
    # the exported checkpoint's step, and why that one: "final" (the default), "best_metric",
    # "early_stopping"
    result_step: int
    result_reason: ResultReason
    # the best evaluation by the selection metric; None when the job exports the final model
    best_step: int | None
    # the early_stopped event's fields, when it stopped early (absent otherwise)
    stopped_early: dict[str, Any] | None = None


class Failed(_Event):
    type: Literal["failed"] = "failed"
    code: str
    message: str
    param: str | None


TrainerEvent = Annotated[
    Started
    | Progress
    | Log
    | Eval
    | Checkpoint
    | Message
    | EarlyStopped
    | Paused
    | Succeeded
    | Failed,
    Field(discriminator="type"),
]
# how an attempt ends
Outcome = Succeeded | Paused | Failed

_EVENT: TypeAdapter[TrainerEvent] = TypeAdapter(TrainerEvent)


def parse_event(line: str | dict[str, Any]) -> TrainerEvent:
    """One line of events.jsonl (or its parsed object) as its event; raises ValueError."""
    try:
        if isinstance(line, str):
            return _EVENT.validate_json(line)
        return _EVENT.validate_python(line)
    except ValidationError as exc:
        raise ValueError(f"not a trainer event: {exc.errors()[0]['msg']}") from exc


def json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null, so every event line parses anywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def to_line(event: TrainerEvent) -> str:
    return json.dumps(event.wire(), allow_nan=False)

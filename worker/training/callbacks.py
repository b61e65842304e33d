"""Events out of the Trainer loop, and the loop's guard against a diverging loss."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.events import (
    Eval,
    Failed,
    Log,
    Message,
    Progress,
    Started,
    TrainerEvent,
)
from worker.training.metrics import eval_fields

# What the trainer hands its events to: the wire form (docs/internals.md), one dict each.
Emit = Callable[[dict[str, Any]], None]


class EventLog:
    """Emits events in contract order: messages noted before `started` wait for it."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._pending: list[Message] = []
        self.started = False

    def emit(self, event: TrainerEvent) -> None:
        self._emit(event.wire())

    def message(self, level: str, text: str) -> None:
        event = Message(level=level, message=text)  # type: ignore[arg-type]
        if self.started:
            self.emit(event)
        else:
            self._pending.append(event)

    def start(self, event: Started) -> None:
        self.emit(event)
        self.started = True
        self._flush()

    def fail(self, code: str, message: str, param: str | None) -> None:
        self._flush()
        self.emit(Failed(code=code, message=message, param=param))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for event in pending:
            self.emit(event)


class EventCallback(TrainerCallback):
    """Turns the Trainer's hooks into started / progress / log / eval events."""

    def __init__(self, events: EventLog, task: str, started_fields: dict[str, Any]) -> None:
        self.events = events
        self.task = task
        self.started_fields = started_fields
        # tokens/s between two logs
        self._last_time = 0.0
        self._last_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.events.start(Started(total_steps=state.max_steps, **self.started_fields))
        self._last_time = time.monotonic()
        self._last_tokens = int(state.num_input_tokens_seen)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.events.emit(
            Progress(step=state.global_step, total_steps=state.max_steps, epoch=state.epoch)
        )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # The Trainer logs train losses ("loss"), eval metrics and a final summary here;
        # only the first are log events (evals come through on_evaluate).
        if not logs or "loss" not in logs:
            return
        now, tokens = time.monotonic(), int(state.num_input_tokens_seen)
        elapsed = now - self._last_time
        tokens_per_second = (tokens - self._last_tokens) / elapsed if elapsed > 0 else None
        self._last_time, self._last_tokens = now, tokens
        self.events.emit(
            Log.model_validate(
                {
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "train_loss": logs["loss"],
                    "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"),
                    "tokens_per_second": tokens_per_second,
                    # a method's own figures (DPO's rewards)
                    **{k: v for k, v in logs.items() if k.startswith("reward_")},
                }
            )
        )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # An evaluation and a save follow the log at the same step: tokens/s counts training.
        self._last_time = time.monotonic()

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.events.emit(
            Eval.of(state.global_step, state.epoch, eval_fields(metrics or {}, self.task))
        )


class NonFiniteLoss(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"training loss became {loss} at step {step}")
        self.step = step
        self.loss = loss


class GuardedTrainer(Trainer):
    """A Trainer that stops at the first NaN/inf loss instead of training on garbage.

    The stock Trainer only hides such losses from its logs (logging_nan_inf_filter) and
    keeps stepping, which leaves NaN weights and a useless model behind.
    """

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
        return loss

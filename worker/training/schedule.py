"""When to evaluate, checkpoint and stop, and which evaluation the exported model is.

The Trainer's own strategies are off (eval/save strategy "no"): TrainingSchedule decides at
every optimizer step, so that epoch ends, `eval_steps`, `checkpoint_steps`, early stopping
and a pause request combine without saving the same step twice. Every evaluation is
followed by a checkpoint, so the evaluation picked for export always has weights, and every
checkpoint is preceded by a training-loss log at the same step, so train and validation
loss line up step for step.

The exported model is the last evaluation's (the final model) unless the job asked for a
selection: `best_metric`, or early stopping (which picks by its own metric). A selection on a
small validation set picks noise (docs/training.md, "Which checkpoint is the model").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import task_plugins
from app.jobs.spec import Hyperparameters, ResultReason
from task_plugins.base import MetricSpec
from worker.training.events import EarlyStopped, TrainerEvent
from worker.training.metrics import eval_fields


def is_better(
    metrics: MetricSpec, value: float, than: float | None, metric: str, min_delta: float = 0.0
) -> bool:
    """Whether `value` improves on `than` by more than `min_delta` (NaN never improves)."""
    if math.isnan(value):
        return False
    if than is None:
        return True
    return metrics.is_better(metric, value, than, min_delta)


@dataclass
class Evaluated:
    """One evaluation: its step, the value of the metric it was judged by, its fields."""

    step: int
    value: float | None
    fields: dict[str, Any]


class PauseSignal:
    """True once the supervisor asked for a pause (the pause file exists).

    With several processes every rank must stop at the same step, so the ranks agree
    through an all-reduce: one rank seeing the file is enough.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path = path
        self.device = device

    def __call__(self) -> bool:
        requested = self.path.exists()
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([1 if requested else 0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        return requested


class TrainingSchedule(TrainerCallback):
    def __init__(
        self,
        hp: Hyperparameters,
        task: str,
        pause_requested: Callable[[], bool],
        note: Callable[[TrainerEvent], None],
    ) -> None:
        self.eval_steps = hp.eval_steps
        self.checkpoint_steps = hp.checkpoint_steps
        # None: no selection, the final model is exported
        self.selection_metric = hp.selection_metric
        self.result_reason: ResultReason = hp.result_reason
        self.early_stopping = hp.early_stopping
        self.monitored = hp.monitored_metric
        self.task = task
        self.metrics = task_plugins.get(task).metrics
        self.pause_requested = pause_requested
        self.note = note  # emits an event (rank 0) or does nothing (other ranks)
        self.steps_per_epoch = 1
        # the best evaluation by selection_metric (None without a selection)
        self.best: Evaluated | None = None
        self.last: Evaluated | None = None
        # early stopping: the best monitored value so far and evaluations since it improved
        self.monitor_best: float | None = None
        self.stale_evaluations = 0
        self.stopped_early: dict[str, Any] | None = None
        self.paused_at: int | None = None

    @property
    def best_step(self) -> int | None:
        return self.best.step if self.best else None

    @property
    def result(self) -> Evaluated | None:
        """The evaluation whose checkpoint is exported: the best one when the job selects,
        else the last one."""
        return self.best if self.selection_metric is not None else self.last

    # -- the Trainer's hooks ------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        epochs = max(1, math.ceil(state.num_train_epochs))
        self.steps_per_epoch = max(1, state.max_steps // epochs)
        # A resumed run replays the evaluations of its restored history: the best step and
        # the early-stopping count continue where the checkpoint left them.
        for entry in state.log_history:
            if "eval_loss" in entry and "step" in entry:
                self._observe(int(entry["step"]), eval_fields(entry, self.task), replay=True)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        step = state.global_step
        last = step >= state.max_steps
        epoch_end = step % self.steps_per_epoch == 0 or last
        on_eval_step = self.eval_steps is not None and step % self.eval_steps == 0
        evaluate = (epoch_end if self.eval_steps is None else on_eval_step) or last
        save = (
            evaluate
            or epoch_end
            or (self.checkpoint_steps is not None and step % self.checkpoint_steps == 0)
        )
        # Asked every step (all ranks together); a pause at the very last step is moot.
        if self.pause_requested() and not last:
            save = True
            self.paused_at = step
            control.should_training_stop = True
        if evaluate:
            control.should_evaluate = True
        if save:
            control.should_save = True
            control.should_log = True
        return control

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if self._observe(state.global_step, eval_fields(metrics or {}, self.task)):
            control.should_training_stop = True
        return control

    # -- bookkeeping ----------------------------------------------------------------------

    def _observe(self, step: int, fields: dict[str, Any], replay: bool = False) -> bool:
        """Record one evaluation; True when early stopping says to stop now."""
        self.last = Evaluated(step, None, fields)
        if self.selection_metric is not None:
            value = _number(fields.get(self.selection_metric))
            if value is not None and is_better(
                self.metrics,
                value,
                self.best.value if self.best else None,
                self.selection_metric,
            ):
                self.best = Evaluated(step, value, fields)
        if self.early_stopping is None:
            return False
        monitored = _number(fields.get(self.monitored))
        if monitored is None:
            return False
        threshold = (
            self.early_stopping.threshold(self.monitor_best)
            if self.monitor_best is not None
            else 0.0
        )
        if is_better(self.metrics, monitored, self.monitor_best, self.monitored, threshold):
            self.monitor_best = monitored
            self.stale_evaluations = 0
            return False
        self.stale_evaluations += 1
        if self.stale_evaluations < self.early_stopping.patience or replay:
            return False
        best = self.best
        direction = "fallen" if self.monitored in self.metrics.lower_is_better else "risen"
        early = self.early_stopping
        by = f"{early.min_delta * 100:g}% of its best" if early.relative else f"{early.min_delta:g}"
        keeping = best.step if best else step
        event = EarlyStopped(
            step=step,
            metric=self.monitored,
            value=monitored,
            best_value=self.monitor_best,
            patience=early.patience,
            min_delta=early.min_delta,
            relative=early.relative,
            best_step=best.step if best else None,
            message=(
                f"Early stopping at step {step}: {self.monitored} has not {direction} by more "
                f"than {by} for {early.patience} evaluation(s) (best "
                f"{self.monitor_best:.4f}, now {monitored:.4f}); keeping the best checkpoint "
                f"by {self.selection_metric}, step {keeping}."
            ),
        )
        # the succeeded event repeats these fields (without the message)
        self.stopped_early = {k: v for k, v in event.wire().items() if k not in ("type", "message")}
        self.note(event)
        return True


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None

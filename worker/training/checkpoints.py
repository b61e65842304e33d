"""Checkpoints leave the trainer here: each one gets a manifest, is handed to the supervisor
through the outbox, and old local copies are rotated away (the latest and the best stay).

A Trainer checkpoint folder already has the exported model's layout (the adapter or the
whole model, plus the tokenizer); with tunery.json beside it, the folder can be served as
it is. The supervisor uploads the model files and the trainer state (optimizer, scheduler,
RNG) separately; only the trainer reads the state back, to resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import task_plugins
from app.failures import Failure
from app.jobs.spec import TrainSpec
from worker.training.callbacks import EventLog
from worker.training.events import Checkpoint, json_safe
from worker.training.layout import (
    CHECKPOINTS_DIRNAME,
    MANIFEST,
    OUTBOX_DIRNAME,
    SKIPPED_FILES,
    checkpoint_dirname,
    checkpoint_steps,
    is_trainer_state,
    outbox_dirname,
)
from worker.training.metrics import eval_fields, manifest_metrics
from worker.training.schedule import TrainingSchedule


def manifest_fields(spec: TrainSpec, labels: list[str]) -> dict[str, Any]:
    """tunery.json without the metrics: what the inference server needs to load the model."""
    fields: dict[str, Any] = {
        "task": spec.task,
        "training_type": spec.training_type.type,
        "format": "adapter" if spec.training_type.is_adapter else "full",
        "base_model": str(spec.base_model_dir),
    }
    if task_plugins.get(spec.task).export.labels:
        fields["labels"] = labels
    return fields


def write_manifest(directory: Path, fields: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(json_safe(fields), indent=2) + "\n")


def checkpoint_metrics(log_history: list[dict[str, Any]], step: int, task: str) -> dict[str, Any]:
    """The figures of one checkpoint, in OpenAI's names where it has one.

    train_loss is the loss logged at this step (TrainingSchedule logs at every checkpoint);
    the validation figures exist when an evaluation ran at this step.
    """
    metrics: dict[str, Any] = {"step": step}
    for entry in log_history:
        if entry.get("step") != step:
            continue
        if "loss" in entry:
            metrics["train_loss"] = entry["loss"]
        if "eval_loss" in entry:
            fields = eval_fields(entry, task)
            metrics["valid_loss"] = metrics["full_valid_loss"] = fields["eval_loss"]
            # the task's scalar figures (per-class tables stay out), under their names
            for name, names in task_plugins.get(task).metrics.checkpoint.items():
                if name in fields:
                    metrics.update(dict.fromkeys(names, fields[name]))
    return metrics


def eval_at(log_history: list[dict[str, Any]], step: int, task: str) -> dict[str, Any]:
    for entry in log_history:
        if entry.get("step") == step and "eval_loss" in entry:
            return eval_fields(entry, task)
    return {}


def link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy, across filesystems) every file of source into a new target."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name in SKIPPED_FILES:
            continue
        dest = staging / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
    staging.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def copy_model_files(checkpoint: Path, target: Path) -> None:
    """The servable part of a checkpoint: everything but the trainer state."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file() or path.name in SKIPPED_FILES or is_trainer_state(path.name):
            continue
        dest = target / path.relative_to(checkpoint)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)


class CheckpointHandoff(TrainerCallback):
    """After each save: manifest, outbox, `checkpoint` event, rotation (rank 0 only)."""

    def __init__(
        self,
        spec: TrainSpec,
        labels: list[str],
        schedule: TrainingSchedule,
        events: EventLog,
        is_main: bool,
    ) -> None:
        self.spec = spec
        self.fields = manifest_fields(spec, labels)
        self.schedule = schedule
        self.events = events
        self.is_main = is_main

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Every rank writes its own RNG state into the folder; wait until all have.
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if not self.is_main:
            return
        step = state.global_step
        folder = self.spec.output_dir / CHECKPOINTS_DIRNAME / checkpoint_dirname(step)
        write_manifest(
            folder,
            {
                **self.fields,
                "metrics": manifest_metrics(eval_at(state.log_history, step, self.spec.task)),
                "best_step": step,
                "step": step,
            },
        )
        outbox = self.spec.output_dir / OUTBOX_DIRNAME / outbox_dirname(step)
        link_tree(folder, outbox)
        self.events.emit(
            Checkpoint(
                step=step,
                epoch=state.epoch,
                dir=outbox.relative_to(self.spec.output_dir).as_posix(),
                metrics=checkpoint_metrics(state.log_history, step, self.spec.task),
                best_step=self.schedule.best_step,
            )
        )
        self._rotate(keep={step, self.schedule.best_step})

    def _rotate(self, keep: set[int | None]) -> None:
        checkpoints = self.spec.output_dir / CHECKPOINTS_DIRNAME
        for old in checkpoint_steps(checkpoints):
            if old not in keep:
                shutil.rmtree(checkpoints / checkpoint_dirname(old), ignore_errors=True)


def best_checkpoint_dir(spec: TrainSpec, step: int) -> Path:
    """The local folder of the checkpoint to export (the final one or the selected one)."""
    folder = spec.output_dir / CHECKPOINTS_DIRNAME / checkpoint_dirname(step)
    if not folder.is_dir():
        raise Failure(
            "checkpoint_missing",
            f"the checkpoint to export (step {step}) is not in {folder.parent}; it should have "
            "been kept there (or restored by the supervisor when resuming). Retry the job.",
        )
    return folder

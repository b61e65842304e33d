"""The worker's half of a task plugin: what training needs from a task, with torch in hand.

A task package's `training` module holds one TaskTrainer; its TaskPlugin names it
(`trainer = "task_plugins.<task>.training:TRAINER"`). Everything else in worker/training
(the spec, events, the schedule, checkpoints, resume, pause, the recipes, the export) is
shared and asks the task only through this interface.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft import TaskType
from torch import nn
from transformers import (
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import task_plugins
from app.failures import Failure
from app.jobs.spec import TrainSpec
from task_plugins.base import Row, TaskPlugin
from worker.training.features import Encoded, PadCollator, prepare_tokenizer

Note = Callable[[str, str], None]
# what the Trainer calls after an evaluation, and (optionally) on each batch of logits
ComputeMetrics = Callable[[Any], dict[str, Any]]
PreprocessLogits = Callable[[Any, Any], Any]
# Safe loading everywhere: safetensors only, never code from the model directory.
SAFE_LOAD: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}


class TaskTrainer(ABC):
    """Everything of training that depends on the task, and nothing else."""

    # the torch-free half: name, formats, metrics, defaults
    plugin: TaskPlugin
    # peft's task type for the LoRA adapter (None: a plain PeftModel, for a head peft has no
    # task type for, such as image classification's)
    peft_task_type: TaskType | None
    # the row field a carved validation split keeps the proportions of (None: a plain split)
    stratify_by: str | None = None
    # whether its inputs are tokens the Trainer counts (trained_tokens, tokens_per_second)
    counts_tokens: bool = True

    @abstractmethod
    def check_base_model(self, config: PretrainedConfig, base_dir: Path) -> None:
        """Refuse a base that cannot do the task, before any weight loads; raises Failure."""

    def labels(self, spec: TrainSpec, train: list[Row], validation: list[Row]) -> list[str]:
        """The class names (index = the model's label id), or [] for a task without them."""
        return []

    def load_processor(self, base_dir: Path, formats: set[str], note: Note) -> Any:
        """The tokenizer (or image/feature processor) saved with the model."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise Failure(
                "invalid_base_model", f"cannot load the base model tokenizer: {exc}"
            ) from exc
        prepare_tokenizer(tokenizer, note)
        return tokenizer

    @abstractmethod
    def encode(
        self, spec: TrainSpec, rows: list[Row], processor: Any, labels: list[str], max_length: int
    ) -> Encoded:
        """The model's inputs per row (truncated to max_length, counted in Encoded)."""

    @abstractmethod
    def load_model(
        self, weights_dir: Path, labels: list[str], extra: dict[str, Any]
    ) -> PreTrainedModel:
        """The base with the task's head, in float32; `extra` goes to from_pretrained."""

    def collator(
        self,
        spec: TrainSpec,
        model: nn.Module,
        processor: Any,
        train_set: Encoded,
        cuda: bool,
        note: Note,
    ) -> Callable[[list[dict[str, Any]]], Any]:
        tokenizer: PreTrainedTokenizerBase = processor
        return PadCollator(int(tokenizer.pad_token_id))

    @abstractmethod
    def metrics(
        self, labels: list[str], validation: Encoded | None = None
    ) -> tuple[ComputeMetrics, PreprocessLogits | None]:
        """compute_metrics for the Trainer, and preprocess_logits_for_metrics (or None).
        `validation` is the evaluation set in the Trainer's order, for figures that point at
        its rows (media classification's misclassified examples)."""

    def check_start(self, manifest: dict[str, Any], labels: list[str]) -> None:
        """Refuse a from_checkpoint model that this job's data cannot continue."""
        return None

    def lora_targets(self, model_type: str) -> str | list[str] | None:
        """LoRA's target modules when the job names none (None: peft's default for the
        architecture, else every linear layer)."""
        return None

    def lora_modules_to_save(self, model: nn.Module) -> list[str]:
        """Modules an adapter trains and saves whole (peft's task types add their own head)."""
        return []

    def prepare_model(self, model: nn.Module, spec: TrainSpec, note: Note) -> None:
        """Last changes to the trainable model after the recipe (freeze a front end, ...)."""
        return None


@functools.cache
def trainer_for(task: str) -> TaskTrainer:
    trainer = task_plugins.load_hook(task_plugins.get(task).trainer)
    if not isinstance(trainer, TaskTrainer):
        raise TypeError(f"{task_plugins.get(task).trainer} is not a TaskTrainer")
    return trainer

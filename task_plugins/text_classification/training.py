"""Text classification training (the worker's half; imports torch): labels from the data,
texts tokenized with their label ids, a sequence-classification head sized to the labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import TaskType
from transformers import (
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from app.failures import Failure
from app.jobs.spec import TrainSpec
from task_plugins.base import Row
from task_plugins.text_classification import TASK
from task_plugins.text_classification.metrics import ClassificationMetrics
from worker.training.data import sort_labels
from worker.training.features import Encoded
from worker.training.plugin import SAFE_LOAD, ComputeMetrics, PreprocessLogits, TaskTrainer


class TextClassificationTrainer(TaskTrainer):
    plugin = TASK
    peft_task_type: TaskType | None = TaskType.SEQ_CLS
    stratify_by = "label"

    def check_base_model(self, config: PretrainedConfig, base_dir: Path) -> None:
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise Failure(
                "invalid_base_model",
                f"{base_dir.name} (model_type {model_type!r}) has no sequence-classification head "
                "in transformers, so it cannot be tuned to classify; choose an encoder such as "
                "BERT or MiniLM, or a decoder such as Llama or Qwen",
                "model",
            )

    def labels(self, spec: TrainSpec, train: list[Row], validation: list[Row]) -> list[str]:
        labels = sort_labels({row["label"] for row in train})
        if spec.validation_file is None:
            # Labels only in the carved validation rows still get an id, so every row scores.
            return sort_labels({row["label"] for row in train + validation})
        unknown = sort_labels({row["label"] for row in validation} - set(labels))
        if unknown:
            raise Failure(
                "invalid_validation_file",
                f"{spec.validation_file.filename} has label(s) that the training file does "
                f"not: {', '.join(unknown)}; add examples of them to the training file or "
                "remove them",
                "validation_file",
            )
        return labels

    def encode(
        self, spec: TrainSpec, rows: list[Row], processor: Any, labels: list[str], max_length: int
    ) -> Encoded:
        label_ids = {label: index for index, label in enumerate(labels)}
        return encode_classification(rows, processor, label_ids, max_length)

    def load_model(
        self, weights_dir: Path, labels: list[str], extra: dict[str, Any]
    ) -> PreTrainedModel:
        # A bare encoder (e.g. MiniLM) gets a new, seeded head; one with another label set
        # gets a new head of the right size.
        model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            weights_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
            **SAFE_LOAD,
            **extra,
        )
        # Its forward takes **kwargs, so the Trainer would pass num_items_in_batch and, with
        # several ranks, multiply the loss by the world size, assuming a loss summed over the
        # items; this head's loss is a per-batch mean, so that doubled the loss (and the
        # gradient) under 2-rank DDP (bench/gpu_check.py's ddp step found it).
        model.accepts_loss_kwargs = False  # type: ignore[assignment]  # a plain attribute
        return model

    def metrics(
        self, labels: list[str], validation: Encoded | None = None
    ) -> tuple[ComputeMetrics, PreprocessLogits | None]:
        return ClassificationMetrics(labels), None

    def check_start(self, manifest: dict[str, Any], labels: list[str]) -> None:
        if manifest.get("labels") != labels:
            raise Failure(
                "invalid_training_file",
                f"the checkpoint to start from was trained on the labels "
                f"{manifest.get('labels')}, but this job's data has {labels}; use the same "
                "labels, or start from the base model",
                "training_file",
            )


def encode_classification(
    rows: list[Row], tokenizer: PreTrainedTokenizerBase, label_ids: dict[str, int], max_length: int
) -> Encoded:
    texts = [row["text"] for row in rows]
    full = tokenizer(texts, truncation=False)
    keep = [name for name in tokenizer.model_input_names if name in full]
    encoded = Encoded([])
    for index, row in enumerate(rows):
        features = {name: full[name][index] for name in keep}
        if len(features["input_ids"]) > max_length:
            # Re-tokenize with truncation so special tokens ([SEP], ...) stay at the end.
            encoded.truncated += 1
            cut = tokenizer(row["text"], truncation=True, max_length=max_length)
            features = {name: cut[name] for name in keep}
        features["labels"] = label_ids[row["label"]]
        encoded.features.append(features)
    return encoded


TRAINER = TextClassificationTrainer()

"""Evaluation metrics, computed with numpy (no sklearn in the worker image)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction

IGNORE_INDEX = -100
# Trainer bookkeeping that is not a metric of the model.
_NOT_METRICS = {"runtime", "samples_per_second", "steps_per_second", "model_preparation_time"}


def classification_metrics(
    predicted: np.ndarray, true: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix.

    `predicted` and `true` are label ids into `labels`. Macro averages run over the classes
    that occur in `true` or `predicted` (sklearn's convention), so a class absent from a
    small validation set does not drag the average down with a meaningless zero.
    """
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    hits = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    precision = np.divide(hits, predicted_count, out=np.zeros(n), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(n), where=both > 0)
    present = (support > 0) | (predicted_count > 0)
    total = int(confusion.sum())
    return {
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion.tolist(),
    }


def token_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Share of label positions where the argmax of the previous position is the label.

    `predicted` holds argmax token ids per position (logits at t predict token t + 1);
    padding between evaluation batches is IGNORE_INDEX in both arrays.
    """
    next_predicted = predicted[:, :-1]
    next_labels = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    if not mask.any():
        return 0.0
    return float((next_predicted[mask] == next_labels[mask]).mean())


def perplexity(loss: float) -> float:
    # exp overflows a float past ~709; an infinite perplexity says the same thing.
    return math.exp(loss) if loss < 700 else math.inf


class ClassificationMetrics:
    """compute_metrics for the Trainer: logits → the classification metrics."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def __call__(self, prediction: EvalPrediction) -> dict[str, Any]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        true = np.asarray(prediction.label_ids).reshape(-1)
        predicted = np.asarray(logits).argmax(axis=-1).reshape(-1)
        return classification_metrics(predicted, true, self.labels)


def causal_lm_metrics(prediction: EvalPrediction) -> dict[str, Any]:
    predictions = prediction.predictions
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return {
        "token_accuracy": token_accuracy(np.asarray(predictions), np.asarray(prediction.label_ids))
    }


def argmax_logits(
    logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor
) -> torch.Tensor:
    """Keep only the argmax per position: the Trainer would otherwise hold every eval logit
    (batch x length x vocabulary) in memory until the end of the evaluation."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def eval_fields(metrics: dict[str, Any], task: str) -> dict[str, Any]:
    """The Trainer's eval metrics ("eval_accuracy", ...) as the fields of an eval event."""
    fields: dict[str, Any] = {}
    for key, value in metrics.items():
        if not key.startswith("eval_"):
            continue
        name = key.removeprefix("eval_")
        if name in _NOT_METRICS:
            continue
        fields["eval_loss" if name == "loss" else name] = value
    if task == "causal-lm" and "eval_loss" in fields:
        fields["perplexity"] = perplexity(float(fields["eval_loss"]))
    return fields

"""Classification figures, computed with numpy (no sklearn in the worker image): the
trainer's evaluations and the evaluation child's scores share these definitions."""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import EvalPrediction


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

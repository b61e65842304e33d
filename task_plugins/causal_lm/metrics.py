"""Causal LM evaluation figures: next-token accuracy over the positions that carry a loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction

from worker.training.metrics import IGNORE_INDEX


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

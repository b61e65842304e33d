"""Causal LM figures: next-token accuracy, logits kept as ids, perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from task_plugins.causal_lm import perplexity
from task_plugins.causal_lm.metrics import argmax_logits, token_accuracy
from worker.training.metrics import IGNORE_INDEX


def test_token_accuracy_counts_label_positions_shifted() -> None:
    # logits at t predict token t + 1
    labels = np.array(
        [[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]]
    )
    predicted = np.array([[0, 5, 9, 0], [7, 0, 0, 0]])
    assert token_accuracy(predicted, labels) == pytest.approx(2 / 3)
    assert token_accuracy(predicted, np.full_like(labels, IGNORE_INDEX)) == 0.0


def test_argmax_logits_keeps_only_ids() -> None:
    logits = torch.tensor([[[0.1, 0.9], [0.8, 0.2]]])
    assert argmax_logits(logits, torch.zeros(1, 2)).tolist() == [[1, 0]]
    assert argmax_logits((logits,), torch.zeros(1, 2)).tolist() == [[1, 0]]


def test_perplexity_overflows_to_infinity() -> None:
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(1e6) == math.inf

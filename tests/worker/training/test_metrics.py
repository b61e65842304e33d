from __future__ import annotations

import math

import pytest

from worker.training.metrics import eval_fields


def test_eval_fields_and_perplexity() -> None:
    raw = {"eval_loss": 2.0, "eval_token_accuracy": 0.5, "eval_runtime": 0.1, "epoch": 1.0}
    assert eval_fields(raw, "causal-lm") == {
        "eval_loss": 2.0,
        "token_accuracy": 0.5,
        "perplexity": pytest.approx(math.exp(2.0)),
    }
    assert eval_fields({"eval_loss": 1.0, "eval_accuracy": 1.0}, "classification") == {
        "eval_loss": 1.0,
        "accuracy": 1.0,
    }

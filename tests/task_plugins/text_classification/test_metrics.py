"""Classification figures by hand (the trainer's evaluations and the evaluation child's)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from task_plugins.text_classification.metrics import ClassificationMetrics, classification_metrics


def test_classification_metrics_by_hand() -> None:
    labels = ["a", "b", "c"]
    true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])
    result = classification_metrics(predicted, true, labels)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    per_class = result["per_class"]
    assert per_class["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert per_class["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["precision"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_macro_average_skips_classes_absent_from_the_evaluation() -> None:
    result = classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b", "never"])
    assert result["f1"] == 1.0 and result["precision"] == 1.0
    assert result["per_class"]["never"]["support"] == 0


def test_classification_metrics_from_logits() -> None:
    logits = np.array([[2.0, 0.1], [0.3, 0.9], [0.9, 0.1]])
    metrics = ClassificationMetrics(["neg", "pos"])(
        EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1]))
    )
    assert metrics["accuracy"] == pytest.approx(2 / 3)

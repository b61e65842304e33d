"""`tunery jobs get` and `tunery jobs metrics` say which checkpoint the fine-tuned model is."""

from __future__ import annotations

from typing import Any

import pytest

from tunery_client.jobs import describe, evaluations_heading, exported_text

JOB: dict[str, Any] = {
    "id": "ftjob-1",
    "status": "succeeded",
    "model": "tiny-bert",
    "fine_tuned_model": "ft:tiny-bert::ftjob-1",
    "hyperparameters": {"best_metric": None, "early_stopping": None},
    "result_checkpoint": "ft:tiny-bert::ftjob-1:ckpt-step-135",
    "result_step": 135,
    "result_reason": "final",
    "n_validation": 80,
}


def test_the_job_shows_its_exported_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    describe(JOB)
    shown = capsys.readouterr().out
    assert "exported checkpoint  step 135 (ft:tiny-bert::ftjob-1:ckpt-step-135): the final" in (
        shown
    )
    assert "validation rows      80" in shown


def test_the_reason_names_the_metric_it_picked_by() -> None:
    best = {**JOB, "result_step": 45, "result_reason": "best_metric"}
    best["hyperparameters"] = {"best_metric": "accuracy", "early_stopping": None}
    assert exported_text(best) == (
        "step 45 (ft:tiny-bert::ftjob-1:ckpt-step-135): the best by accuracy (best_metric)"
    )
    early = {**JOB, "result_checkpoint": None, "result_step": 90, "result_reason": "early_stopping"}
    early["hyperparameters"] = {"best_metric": None, "early_stopping": {"metric": "f1"}}
    assert exported_text(early) == "step 90: the best by f1 (early stopping)"
    assert exported_text({**JOB, "result_step": None}) is None


def test_the_metrics_table_says_which_evaluation_is_the_model() -> None:
    assert evaluations_heading(
        {"result_step": 135, "result_reason": "final", "best_step": None}
    ) == ("Evaluations (exported: step 135, the final model)")
    assert evaluations_heading({"result_step": 45, "result_reason": "best_metric"}) == (
        "Evaluations (exported: step 45, the best (best_metric))"
    )
    # a job still running with a selection: its best so far
    assert evaluations_heading({"result_step": None, "best_step": 45}) == (
        "Evaluations (best step 45)"
    )
    assert evaluations_heading({"result_step": None, "best_step": None}) == "Evaluations"

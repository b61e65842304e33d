"""The model card says which evaluation its metrics are: the exported checkpoint's."""

from __future__ import annotations

from app.models.export import model_card
from app.tables import FineTunedModelRow, JobRow


def card(**job_fields: object) -> str:
    tuned = FineTunedModelRow(
        id="ft:tiny-bert::ftjob-1",
        job_id="ftjob-1",
        base_model="tiny-bert",
        task="classification",
        training_type="lora",
        format="adapter",
        artifact_key="models/ftjob-1/model",
    )
    job = JobRow(
        id="ftjob-1",
        hyperparameters={},
        training_type={"type": "lora"},
        seed=1,
        final_metrics={"eval_loss": 0.215, "accuracy": 0.9375},
        **job_fields,
    )
    return model_card(tuned, job, [], "adapter", None)


def test_the_card_names_the_exported_checkpoint() -> None:
    final = card(result_step=135, result_reason="final", best_step=None)
    assert "## Metrics (the final checkpoint, step 135)" in final
    assert "| accuracy | 0.9375 |" in final
    best = card(result_step=45, result_reason="best_metric", best_step=45)
    assert "## Metrics (the best evaluation, step 45 (best_metric))" in best

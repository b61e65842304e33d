"""Write the trained model where the supervisor uploads it from: output_dir/model/.

The export is one checkpoint's model files (the final one, or the one the job selected; the
adapter or the whole model, and the tokenizer) with a tunery.json that carries its metrics
and says which step it is and why: exactly the weights that were evaluated, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.jobs.spec import ResultReason, TrainSpec
from worker.training.checkpoints import copy_model_files, manifest_fields, write_manifest
from worker.training.layout import MODEL_DIRNAME
from worker.training.metrics import manifest_metrics


def export_model(
    checkpoint_dir: Path,
    spec: TrainSpec,
    labels: list[str],
    metrics: dict[str, Any],
    *,
    best_step: int | None,
    result_step: int,
    result_reason: ResultReason,
) -> Path:
    """Copy the checkpoint's model files to output_dir/model and write tunery.json."""
    target = spec.output_dir / MODEL_DIRNAME
    # copy_model_files starts from an empty folder: a retried job leaves nothing stale behind
    copy_model_files(checkpoint_dir, target)
    write_manifest(
        target,
        {
            **manifest_fields(spec, labels),
            "metrics": manifest_metrics(metrics),
            "best_step": best_step,
            "step": result_step,
            "result_reason": result_reason,
        },
    )
    return target

"""Write the trained model where the supervisor uploads it from: output_dir/model/.

The export is the best checkpoint's model files (the adapter or the whole model, and the
tokenizer) with a tunery.json that carries the final metrics: exactly the weights that
were evaluated, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.jobs.spec import TrainSpec
from worker.training.checkpoints import copy_model_files, manifest_fields, write_manifest
from worker.training.layout import MODEL_DIRNAME


def export_model(
    checkpoint_dir: Path,
    spec: TrainSpec,
    labels: list[str],
    metrics: dict[str, Any],
    best_step: int | None,
) -> Path:
    """Copy the checkpoint's model files to output_dir/model and write tunery.json."""
    target = spec.output_dir / MODEL_DIRNAME
    # copy_model_files starts from an empty folder: a retried job leaves nothing stale behind
    copy_model_files(checkpoint_dir, target)
    write_manifest(
        target, {**manifest_fields(spec, labels), "metrics": metrics, "best_step": best_step}
    )
    return target

"""Write the trained model where the supervisor uploads it from: output_dir/model/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from worker.training.callbacks import json_safe
from worker.training.spec import TrainSpec

MODEL_DIRNAME = "model"
MANIFEST = "tunery.json"


def export_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: TrainSpec,
    labels: list[str],
    metrics: dict[str, Any],
    best_step: int | None,
) -> Path:
    """Save the adapter (LoRA) or the whole model, the tokenizer and tunery.json."""
    target = spec.output_dir / MODEL_DIRNAME
    # A retried job must not leave files of an earlier export (e.g. another format) behind.
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    is_adapter = isinstance(model, PeftModel)
    # PeftModel saves adapter_config.json + adapter_model.safetensors (with the classifier
    # head through modules_to_save); a transformers model saves config + model.safetensors.
    model.save_pretrained(target)  # type: ignore[operator]
    tokenizer.save_pretrained(target)
    manifest: dict[str, Any] = {
        "task": spec.task,
        "training_type": spec.training_type.type,
        "format": "adapter" if is_adapter else "full",
        "base_model": str(spec.base_model_dir),
        "metrics": metrics,
        "best_step": best_step,
    }
    if spec.task == "classification":
        manifest["labels"] = labels
    (target / MANIFEST).write_text(json.dumps(json_safe(manifest), indent=2) + "\n")
    return target

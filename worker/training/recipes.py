"""The model to train: load the base (the task's head), then apply the recipe (LoRA, QLoRA,
full, or freeze). The recipes are the same for every task."""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import AutoConfig, BitsAndBytesConfig, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from app.failures import Failure
from app.jobs.spec import FreezeType, FullType, LoraType, QLoraType
from app.model_safety import UnsafeModel, check_model_folder
from worker.training.layout import MANIFEST
from worker.training.plugin import trainer_for

# Output heads: trained by every recipe, kept whole (not LoRA-adapted) in adapters.
HEAD_NAMES = {"classifier", "score", "lm_head", "pooler", "projector"}
# Final norms sit between the last block and the head; freeze trains them with the blocks.
FINAL_NORM_NAMES = {"norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"}


def load_config(base_dir: Path) -> PretrainedConfig:
    try:  # refused outright, before transformers reads a file (app/model_safety.py)
        check_model_folder(base_dir)
    except UnsafeModel as exc:
        raise Failure("invalid_base_model", str(exc), "model") from exc
    try:
        return AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise Failure("invalid_base_model", f"cannot load the base model config: {exc}") from exc


def read_init_manifest(init_dir: Path) -> dict[str, Any]:
    """tunery.json of a checkpoint a job starts from (from_checkpoint)."""
    try:
        manifest = json.loads((init_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise Failure(
            "invalid_checkpoint",
            f"the checkpoint to start from has no readable {MANIFEST}: {exc}",
            "from_checkpoint",
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in ("adapter", "full"):
        raise Failure(
            "invalid_checkpoint",
            f"the checkpoint to start from has an unknown format in {MANIFEST}",
            "from_checkpoint",
        )
    return manifest


def quantization_config() -> BitsAndBytesConfig:
    """QLoRA's 4-bit NF4 base; refuses loudly where it cannot run (never falls back)."""
    if not torch.cuda.is_available():
        raise Failure(
            "gpu_required",
            "training_type qlora quantizes the base model to 4 bits with bitsandbytes, which "
            "needs a CUDA GPU, and this worker has none. Use training_type lora (the same "
            "adapter on a full-precision base) or run the job on a worker with a GPU.",
            "training_type",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Failure(
            "gpu_required",
            "training_type qlora needs the bitsandbytes package on the worker; install it "
            "(pip install 'tunery[gpu]') or use training_type lora.",
            "training_type",
        )
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_model(
    task: str,
    base_dir: Path,
    labels: list[str],
    quantization: BitsAndBytesConfig | None = None,
    device_index: int = 0,
) -> PreTrainedModel:
    """The base with the task's head, in float32 (training precision; autocast does bf16).

    With `quantization` (QLoRA) the weights load in 4 bits straight onto this process's GPU.
    """
    extra: dict[str, Any] = {}
    if quantization is not None:
        extra = {"quantization_config": quantization, "device_map": {"": device_index}}
    try:
        model = trainer_for(task).load_model(base_dir, labels, extra)
    except (OSError, ValueError) as exc:
        raise Failure("invalid_base_model", f"cannot load the base model: {exc}") from exc
    if quantization is not None:
        # casts norms to fp32 and makes the inputs carry gradients through the frozen 4-bit base
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def apply_recipe(
    model: PreTrainedModel,
    task: str,
    training_type: LoraType | QLoraType | FullType | FreezeType,
    note: Callable[[str, str], None],
    adapter_dir: Path | None = None,
) -> nn.Module:
    """Make the model trainable per the recipe; `adapter_dir` continues that adapter instead
    of starting a new one (a job started from another job's LoRA checkpoint)."""
    if isinstance(training_type, LoraType):
        if adapter_dir is not None:
            return _continue_adapter(model, adapter_dir)
        return _lora(model, task, training_type)
    if isinstance(training_type, FreezeType):
        _freeze(model, training_type.trainable_layers, note)
    else:
        model.requires_grad_(True)
    return model


def _lora(model: PreTrainedModel, task: str, training_type: LoraType) -> PeftModel:
    config = lora_config(
        training_type,
        task,
        str(model.config.model_type),
        # GPT-2 style Conv1D layers store their weight transposed.
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),
        modules_to_save=trainer_for(task).lora_modules_to_save(model),
    )
    try:
        with warnings.catch_warnings():
            # peft 0.2x still asks transformers 5 for a renamed attribute; nothing to act on.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise Failure(
            "invalid_training_type", f"cannot apply LoRA: {exc}", "training_type"
        ) from exc


def lora_config(
    training_type: LoraType,
    task: str,
    model_type: str,
    fan_in_fan_out: bool = False,
    modules_to_save: list[str] | None = None,
) -> LoraConfig:
    """peft's LoraConfig for the job's training type, its values as the job gave them."""
    target: str | list[str] | None = training_type.target_modules
    if target is None:
        target = trainer_for(task).lora_targets(model_type)
    if target is None and model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        # peft knows no default for this architecture: adapt every linear layer but the head.
        target = "all-linear"
    return LoraConfig(
        task_type=trainer_for(task).peft_task_type,
        r=training_type.r,
        # a float, as the job gave it: peft scales by lora_alpha / r
        lora_alpha=training_type.alpha,  # type: ignore[arg-type]
        lora_dropout=training_type.dropout,
        target_modules=target,
        fan_in_fan_out=fan_in_fan_out,
        modules_to_save=modules_to_save or None,
        # a head saved whole is never also adapted (all-linear would reach it otherwise)
        exclude_modules=modules_to_save or None,
    )


def _continue_adapter(model: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise Failure(
            "invalid_checkpoint",
            f"cannot continue the checkpoint's adapter on this base model: {exc}",
            "from_checkpoint",
        ) from exc


def _freeze(model: nn.Module, trainable_layers: int, note: Callable[[str, str], None]) -> None:
    """Train the top `trainable_layers` blocks and the head; everything else stays fixed."""
    found = find_blocks(model)
    if found is None:
        raise Failure(
            "invalid_training_type",
            "freeze found no stack of transformer blocks in this model; use lora or full",
            "training_type",
        )
    blocks_name, blocks = found
    if trainable_layers > len(blocks):
        note(
            "warning",
            f"trainable_layers is {trainable_layers} but the model has {len(blocks)} blocks; "
            "training all of them",
        )
    model.requires_grad_(False)
    top = len(blocks) - min(trainable_layers, len(blocks))
    for block in list(blocks)[top:]:
        block.requires_grad_(True)
    trainable_names = HEAD_NAMES | (FINAL_NORM_NAMES if trainable_layers > 0 else set())
    for name, module in model.named_modules():
        inside_blocks = name.startswith(f"{blocks_name}.")
        if not inside_blocks and name.rsplit(".", 1)[-1] in trainable_names:
            module.requires_grad_(True)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer block stack: the ModuleList of same-type modules with most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(parameter.numel() for parameter in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    return (best[1], best[2]) if best else None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total); `parameters()` already counts tied weights once."""
    parameters = list(model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return trainable, sum(p.numel() for p in parameters)

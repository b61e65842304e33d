"""The model to train: load the base, then apply the recipe (LoRA, full, or freeze)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from worker.training.spec import Task, TrainingFailure, TrainingType

# Output heads: trained by every recipe, kept whole (not LoRA-adapted) in adapters.
HEAD_NAMES = {"classifier", "score", "lm_head", "pooler"}
# Final norms sit between the last block and the head; freeze trains them with the blocks.
FINAL_NORM_NAMES = {"norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"}
# Safe loading everywhere: safetensors only, never code from the model directory.
SAFE_LOAD: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}


def load_config(base_dir: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TrainingFailure(
            "invalid_base_model", f"cannot load the base model config: {exc}"
        ) from exc


def load_tokenizer(base_dir: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TrainingFailure(
            "invalid_base_model", f"cannot load the base model tokenizer: {exc}"
        ) from exc


def load_model(task: Task, base_dir: Path, labels: list[str]) -> PreTrainedModel:
    """The base with the task's head, in float32 (training precision; autocast does bf16)."""
    try:
        if task == "classification":
            # A bare encoder (e.g. MiniLM) gets a new, seeded head; one with another label set
            # gets a new head of the right size.
            model = AutoModelForSequenceClassification.from_pretrained(
                base_dir,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: index for index, label in enumerate(labels)},
                ignore_mismatched_sizes=True,
                dtype=torch.float32,
                **SAFE_LOAD,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **SAFE_LOAD)
    except (OSError, ValueError) as exc:
        raise TrainingFailure("invalid_base_model", f"cannot load the base model: {exc}") from exc
    return model


def apply_recipe(
    model: PreTrainedModel,
    task: Task,
    training_type: TrainingType,
    note: Callable[[str, str], None],
) -> nn.Module:
    if training_type.type == "lora":
        return _lora(model, task, training_type)
    if training_type.type == "freeze":
        _freeze(model, training_type.trainable_layers, note)
    else:
        model.requires_grad_(True)
    return model


def _lora(model: PreTrainedModel, task: Task, training_type: TrainingType) -> PeftModel:
    target: str | list[str] | None = training_type.target_modules
    if (
        target is None
        and model.config.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    ):
        # peft knows no default for this architecture: adapt every linear layer but the head.
        target = "all-linear"
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        r=training_type.r,
        lora_alpha=training_type.alpha,
        lora_dropout=training_type.dropout,
        target_modules=target,
        # GPT-2 style Conv1D layers store their weight transposed.
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),
    )
    try:
        with warnings.catch_warnings():
            # peft 0.2x still asks transformers 5 for a renamed attribute; nothing to act on.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingFailure(
            "invalid_training_type", f"cannot apply LoRA: {exc}", "training_type"
        ) from exc


def _freeze(model: nn.Module, trainable_layers: int, note: Callable[[str, str], None]) -> None:
    """Train the top `trainable_layers` blocks and the head; everything else stays fixed."""
    found = find_blocks(model)
    if found is None:
        raise TrainingFailure(
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

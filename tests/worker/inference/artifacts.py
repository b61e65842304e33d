"""Trained-looking artifacts made without a trainer, and model specs that name them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from app.storage import ArtifactStore

LABELS = ["negative", "positive", "neutral"]
CLS_ADAPTER = "models/ftjob-cls/model"
LM_FULL = "models/ftjob-full/model"
LM_ADAPTER = "models/ftjob-lora/model"


def write_manifest(directory: Path, **fields: Any) -> None:
    (directory / "tunery.json").write_text(json.dumps({"metrics": {}, **fields}))


def _randomize_lora(model: Any) -> None:
    # a fresh LoRA adapter has lora_B = 0 and changes nothing; training would move it
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)


def build_classification_adapter(
    bert_dir: Path, target: Path, labels: list[str] = LABELS, seed: int = 1
) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(
        bert_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    model = get_peft_model(base, config)
    _randomize_lora(model)
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(target)
    write_manifest(
        target,
        task="classification",
        format="adapter",
        training_type={"type": "lora", "r": 4},
        base_model=str(bert_dir),
        labels=labels,
    )
    return target


def build_causal_adapter(llama_dir: Path, target: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    _randomize_lora(model)
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(target)
    write_manifest(target, task="causal-lm", format="adapter", base_model=str(llama_dir))
    return target


def copy_artifact(store: ArtifactStore, source: str, target: str) -> Path:
    """A copy of an artifact under a new key, for tests that break it."""
    destination = store.local_dir(target)
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(store.local_dir(source), destination)
    return destination


def cls_spec(bert_dir: Path, artifact: str | None = CLS_ADAPTER, key: str = "ft:cls") -> dict:
    return {
        "key": key,
        "task": "classification",
        "base_model_dir": str(bert_dir),
        "artifact": artifact,
    }


def lm_spec(llama_dir: Path, artifact: str | None = LM_FULL, key: str = "ft:lm") -> dict:
    return {"key": key, "task": "causal-lm", "base_model_dir": str(llama_dir), "artifact": artifact}


def variant_of(store: ArtifactStore, source: str, target: str, seed: int) -> str:
    """A copy of the adapter at `source` with its trained tensors redrawn: another adapter
    of the same base, as a second fine-tuning job would give."""
    from safetensors.torch import load_file, save_file

    directory = copy_artifact(store, source, target)
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if "lora_B" in name or "classifier" in name or "lora_A" in name:
            noise = torch.randn(tensor.shape, generator=generator) * 0.5
            tensors[name] = noise.to(tensor.dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    return target

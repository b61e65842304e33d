"""Padding-free batches for causal LM: every batch becomes one row of concatenated examples
(transformers' DataCollatorWithFlattening) whose position ids restart at each example.

That is only correct when the model's attention keeps the examples apart from position ids
alone (flash attention, or SDPA/eager through transformers' packed-sequence masks). Rather
than trust a list of architectures, `packing_supported` asks the model itself: two examples
packed into one row must give the same logits as each example alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithFlattening

from worker.training.metrics import IGNORE_INDEX

# fp32 on CPU agrees to ~1e-6; bf16 on GPU to ~1e-2.
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-2}


class PackingCollator:
    """DataCollatorWithFlattening, plus use_cache=False: transformers only keeps packed
    examples apart when no KV cache is in play, and models build one by default."""

    def __init__(self) -> None:
        self.flatten = DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE_INDEX
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = dict(self.flatten(features))
        batch["use_cache"] = False
        return batch


def packing_collator() -> PackingCollator:
    return PackingCollator()


def packing_supported(model: nn.Module, token_ids: list[int], device: torch.device) -> bool:
    """Whether two packed examples come out as if each ran alone (eval mode, no grad)."""
    first, second = token_ids[:5], token_ids[5:8]
    if len(first) < 2 or len(second) < 2:
        return False
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [
                _logits(
                    model, {"input_ids": torch.tensor([ids], device=device), "use_cache": False}
                )
                for ids in (first, second)
            ]
            batch = packing_collator()([{"input_ids": first}, {"input_ids": second}])
            inputs = {
                name: value.to(device) if isinstance(value, torch.Tensor) else value
                for name, value in batch.items()
                if name != "labels"
            }
            packed = _logits(model, inputs)
    except (RuntimeError, ValueError, TypeError):
        return False
    finally:
        model.train(was_training)
    together = torch.cat(alone, dim=1)
    if packed.shape != together.shape:
        return False
    tolerance = _TOLERANCE.get(packed.dtype, 5e-2)
    return bool((packed.float() - together.float()).abs().max() <= tolerance)


def _logits(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output[0]

"""What a task's encoding produces and how batches are padded: shared by every task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.failures import Failure
from worker.training.metrics import IGNORE_INDEX

Features = dict[str, Any]


@dataclass
class Encoded:
    features: list[Features]
    truncated: int = 0
    # causal LM rows whose trainable tokens were all cut off by truncation
    dropped: int = 0


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, note: Callable[[str, str], None]) -> None:
    """Give a tokenizer what training needs: a pad token, and padding on the right."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise Failure(
                "invalid_base_model",
                "the base model's tokenizer has neither a pad nor an eos token",
            )
        tokenizer.pad_token = tokenizer.eos_token
        note("info", "the tokenizer has no pad token; padding with its eos token")
    # Training pads on the right so that position ids and the label shift stay aligned.
    tokenizer.padding_side = "right"


class ListDataset(torch.utils.data.Dataset[Features]):
    def __init__(self, features: Sequence[Features]) -> None:
        self.features = list(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Features:
        return self.features[index]


class PadCollator:
    """Pad a batch on the right: pad id for input ids, 0 for masks, IGNORE_INDEX for labels."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_values = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}

    def __call__(self, batch: list[Features]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in batch[0]:
            values = [features[name] for features in batch]
            if not isinstance(values[0], list):
                out[name] = torch.tensor(values, dtype=torch.long)
                continue
            width = max(len(value) for value in values)
            pad = self.pad_values.get(name, 0)
            out[name] = torch.tensor(
                [value + [pad] * (width - len(value)) for value in values], dtype=torch.long
            )
        return out

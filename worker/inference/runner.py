"""The model runner of continuous batching: forwards over a batch's shared KV cache.

Rows sit right-aligned in one left-padded cache (transformers' DynamicCache, one layer of
[rows, heads, width, head_dim] keys and values per model layer) with a 2-D attention mask
that marks the padding. Every row's newest token is in the last column, so one decode step
feeds one token per row; positions are counted per row, so padding never shifts a row's
rotary or learned position embeddings. Rows join by concatenating caches (padded to one
width) and leave by selecting the others, after which the columns that only padding still
fills are cut away.

Plain functions of (module, tensors); what runs when is the scheduler's business.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from worker.inference.errors import ModelLoadError
from worker.inference.predictors import pad_rows


@dataclass
class KVBatch:
    """The cache of a batch of rows; `lengths[i]` real tokens of row i end in the last column.
    A decode step grows it in place."""

    cache: Any  # a DynamicCache of full layers: keys, values [rows, heads, width, dim]
    mask: torch.Tensor  # [rows, width], 1 where a real token is
    lengths: list[int]

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return _layers_of(self.cache)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def prefill(
    module: Any,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    extra: Mapping[str, Any] | None = None,
    last_only: bool = True,
) -> tuple[KVBatch, torch.Tensor]:
    """Run the prompts (left-padded into one batch); their cache and last logits [rows, vocab]."""
    from transformers import DynamicCache

    ids, mask = pad_rows(prompts, pad_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # a cache made without the config holds full keys and values in every layer, the one
    # layout rows can be joined and split in (sliding-window layers still mask to their window)
    cache = DynamicCache()
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if last_only else {}
    with torch.inference_mode():
        out = module(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            **kwargs,
            **(extra or {}),
        )
    _layers_of(out.cache)  # refuse a cache that cannot be split by row before anyone relies on it
    return KVBatch(out.cache, mask, [len(p) for p in prompts]), out.logits[:, -1, :]


def decode(
    module: Any, batch: KVBatch, tokens: Sequence[int], extra: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """One step: each row's token in (the batch grows by a column), its next logits out."""
    device = batch.mask.device
    ids = torch.tensor(list(tokens), dtype=torch.long, device=device).unsqueeze(1)
    mask = torch.cat(
        [batch.mask, torch.ones((batch.rows, 1), dtype=batch.mask.dtype, device=device)], 1
    )
    positions = torch.tensor(batch.lengths, dtype=torch.long, device=device).unsqueeze(1)
    with torch.inference_mode():
        out = module(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
            **(extra or {}),
        )
    batch.mask = mask
    batch.lengths = [n + 1 for n in batch.lengths]
    return out.logits[:, -1, :]


def join(first: KVBatch, second: KVBatch) -> KVBatch:
    """first's rows, then second's, in one cache as wide as the wider of the two."""
    width = max(first.width, second.width)
    layers = [
        (
            torch.cat([_widen(k1, width), _widen(k2, width)]),
            torch.cat([_widen(v1, width), _widen(v2, width)]),
        )
        for (k1, v1), (k2, v2) in zip(first.layers, second.layers, strict=True)
    ]
    mask = torch.cat(
        [F.pad(first.mask, (width - first.width, 0)), F.pad(second.mask, (width - second.width, 0))]
    )
    return KVBatch(_cache_of(layers), mask, first.lengths + second.lengths)


def keep(batch: KVBatch, rows: Sequence[int]) -> KVBatch:
    """Only the given rows, without the leading columns that are padding in all of them."""
    index = torch.tensor(list(rows), dtype=torch.long, device=batch.mask.device)
    lengths = [batch.lengths[i] for i in rows]
    start = batch.width - max(lengths)
    mask = batch.mask.index_select(0, index)[:, start:]
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
        for k, v in batch.layers
    ]
    return KVBatch(_cache_of(layers), mask, lengths)


def _widen(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a [rows, heads, width, dim] tensor with zeros to `width` columns."""
    missing = width - tensor.shape[2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing else tensor


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _layers_of(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from transformers.cache_utils import DynamicLayer

    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        if type(layer) is not DynamicLayer or keys is None or values is None or keys.dim() != 4:
            raise ModelLoadError(
                f"this model keeps a {type(layer).__name__} cache, which continuous batching "
                "cannot split by row; serve a decoder with attention layers (Llama, Qwen, GPT-2)"
            )
        layers.append((keys, values))
    return layers

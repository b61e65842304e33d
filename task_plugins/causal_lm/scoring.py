"""Score a loaded causal LM on rows: the loss on completion (assistant) tokens exactly as
training computes it (the same encoding), its perplexity, next-token accuracy, and exact
match of greedy completions against the reference. Pure ML: no HTTP, Celery or SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from task_plugins.causal_lm import perplexity
from task_plugins.causal_lm.chat_tools import has_tools
from task_plugins.causal_lm.training import encode_causal
from worker.evaluation.scoring import BATCH_SIZE
from worker.inference.loading import LoadedModel
from worker.inference.predictors import (
    GenerationOptions,
    encode_prompt,
    eos_ids,
    finish,
    generate_tokens,
    max_input_tokens,
    pad_rows,
)
from worker.training.metrics import IGNORE_INDEX

# an exact-match completion gets the reference's length plus this many tokens to go wrong in
EXTRA_NEW_TOKENS = 8
MAX_NEW_TOKENS = 512

Row = dict[str, Any]


@dataclass
class _Prompted:
    prompt: Any  # a string, or {"messages": [...]} up to the turn to complete
    reference: str


def score(model: LoadedModel, rows: Sequence[Row]) -> dict[str, Any]:
    tokenizer = model.tokenizer
    shared = model.shared
    limit = max_input_tokens(shared.config, requested=4096)
    encoded = encode_causal(list(rows), tokenizer, limit)
    loss_sum = 0.0
    tokens = 0
    hits = 0
    for start in range(0, len(encoded.features), BATCH_SIZE):
        batch = encoded.features[start : start + BATCH_SIZE]
        ids, mask = pad_rows(
            [f["input_ids"] for f in batch], tokenizer.pad_token_id or 0, left=False
        )
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, features in enumerate(batch):
            labels[row, : len(features["labels"])] = torch.tensor(features["labels"])
        with shared.running([model.adapter_name]) as (module, extra), torch.inference_mode():
            device = next(module.parameters()).device
            logits = module(
                input_ids=ids.to(device), attention_mask=mask.to(device), **extra
            ).logits
        # logits at t predict token t + 1, as in training
        logits = logits[:, :-1].float().cpu()
        target = labels[:, 1:]
        counted = target != IGNORE_INDEX
        loss_sum += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        tokens += int(counted.sum())
        hits += int((logits.argmax(dim=-1)[counted] == target[counted]).sum())
    loss = loss_sum / tokens if tokens else None
    matched, generated = _exact_matches(model, rows)
    return {
        "loss": loss,
        "perplexity": perplexity(loss) if loss is not None else None,
        "token_accuracy": hits / tokens if tokens else None,
        "exact_match": matched / generated if generated else None,
        "scored_tokens": tokens,
        "truncated_rows": encoded.truncated,
        "dropped_rows": encoded.dropped,
    }


def _prompted(row: Row) -> _Prompted | None:
    if "messages" in row:
        messages = list(row["messages"])
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        # tool-calling chats need their tools in the prompt; a weight-0 turn is no reference
        if last < 1 or has_tools(row) or messages[last].get("weight") == 0:
            return None
        return _Prompted({"messages": messages[:last]}, str(messages[last]["content"]))
    return _Prompted(str(row["prompt"]), str(row["completion"]))


def _exact_matches(model: LoadedModel, rows: Sequence[Row]) -> tuple[int, int]:
    """Greedy completions equal to the reference (both stripped of surrounding space)."""
    tokenizer = model.tokenizer
    shared = model.shared
    positions = getattr(shared.config, "max_position_embeddings", None)
    eos = eos_ids(shared.model, tokenizer)
    cases: list[tuple[list[int], str, int]] = []
    for index, row in enumerate(rows):
        prompted = _prompted(row)
        if prompted is None:
            continue
        prompt = encode_prompt(tokenizer, prompted.prompt, index)
        wanted = len(tokenizer(prompted.reference, add_special_tokens=False)["input_ids"])
        budget = min(wanted + EXTRA_NEW_TOKENS, MAX_NEW_TOKENS)
        if isinstance(positions, int) and positions > 0:
            budget = min(budget, positions - len(prompt))
        if budget < 1:
            continue  # the prompt fills the context: nothing could match
        cases.append((prompt, prompted.reference, budget))
    matched = 0
    for start in range(0, len(cases), BATCH_SIZE):
        batch = cases[start : start + BATCH_SIZE]
        options = GenerationOptions(max_new_tokens=max(b for _, _, b in batch), temperature=0)
        with shared.running([model.adapter_name]) as (module, extra):
            new = generate_tokens(
                module,
                [prompt for prompt, _, _ in batch],
                options,
                pad_id=tokenizer.pad_token_id,
                eos=eos,
                tokenizer=tokenizer,
                extra=extra,
            )
        for (prompt, reference, budget), tokens in zip(batch, new, strict=True):
            own = GenerationOptions(max_new_tokens=budget, temperature=0)
            text = finish(tokenizer, tokens[:budget], len(prompt), eos, own)["text"]
            matched += text.strip() == reference.strip()
    return matched, len(cases)

"""Run a loaded model on a batch of inputs: classify texts, or generate continuations.

Plain functions of (model, tokenizer, inputs, parameters) with no HTTP or cache in sight,
so a micro-batcher can later merge several requests into one call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, TypedDict

import torch

# A prompt is either raw text or a chat conversation rendered by the tokenizer's template.
PromptInput = str | Mapping[str, Any]


class PredictionInputError(ValueError):
    """An input the model cannot take (no chat template, too long, wrong kind for the task)."""

    def __init__(self, message: str, param: str = "inputs", code: str = "invalid_input") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class Classification(TypedDict):
    label: str
    score: float
    scores: dict[str, float]


class Generation(TypedDict):
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def classify(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    top_k: int | None = None,
    max_length: int = 512,
    batch_size: int = 16,
) -> list[Classification]:
    """Softmax over the labels of model.config.id2label; `scores` holds the top_k best (all
    labels when None), highest first."""
    id2label = {int(i): str(name) for i, name in model.config.id2label.items()}
    limit = _max_input_tokens(model, max_length)
    device = _device_of(model)
    results: list[Classification] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        encoded = tokenizer(
            batch, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            logits = model(**encoded).logits
        probs = logits.float().softmax(dim=-1).cpu()
        for row in probs:
            ranked = sorted(enumerate(row.tolist()), key=lambda item: item[1], reverse=True)
            kept = ranked[:top_k] if top_k is not None else ranked
            best_index, best_score = ranked[0]
            results.append(
                {
                    "label": id2label.get(best_index, str(best_index)),
                    "score": best_score,
                    "scores": {id2label.get(i, str(i)): p for i, p in kept},
                }
            )
    return results


def _max_input_tokens(model: Any, requested: int) -> int:
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(requested, positions) if isinstance(positions, int) and positions > 0 else requested


# generate() samples from torch's global RNG, shared by every thread. Seeded requests are
# reproducible only if no other sampling runs between the seeding and the end of theirs,
# so every sampled generation holds this lock (greedy decoding uses no randomness).
_SAMPLING_LOCK = threading.Lock()


def generate(
    model: Any,
    tokenizer: Any,
    inputs: Sequence[PromptInput],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
) -> list[Generation]:
    """Continue each input; temperature 0 decodes greedily. `text` holds only new tokens,
    cut before the first stop string."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    prompts = [_tokenize_prompt(tokenizer, item, i) for i, item in enumerate(inputs)]
    _check_context(model, prompts, max_new_tokens)
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id)
    device = _device_of(model)

    eos_ids = _eos_ids(model, tokenizer)
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_ids or None,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if stops:
        options |= {"stop_strings": stops, "tokenizer": tokenizer}
    sampled = temperature > 0
    if sampled:
        # top_k=0 turns off the library's default top-k so top_p alone shapes the distribution
        options |= {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    else:
        options["do_sample"] = False

    rng_guard: AbstractContextManager[Any] = _SAMPLING_LOCK if sampled else nullcontext()
    with rng_guard, _seeded(seed if sampled else None, device), torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options
        )
    new_tokens = output[:, input_ids.shape[1] :].cpu().tolist()
    return [
        _finish(tokenizer, tokens, len(prompt), eos_ids, stops, max_new_tokens)
        for tokens, prompt in zip(new_tokens, prompts, strict=True)
    ]


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the global RNG for one generation, then restore it: later unseeded requests
    must not follow a sequence that a caller's seed made predictable."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _tokenize_prompt(tokenizer: Any, item: PromptInput, index: int) -> list[int]:
    if isinstance(item, str):
        ids = tokenizer(item, add_special_tokens=True)["input_ids"]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise PredictionInputError(
                f"inputs[{index}]: this model has no chat template; send a plain string prompt",
                code="chat_template_missing",
            )
        messages = [dict(m) for m in item["messages"]]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the template already wrote any bos/eos it wants; adding them again would double them
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PredictionInputError(f"inputs[{index}]: the prompt encodes to no tokens")
    return list(ids)


def _check_context(model: Any, prompts: list[list[int]], max_new_tokens: int) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return
    for index, prompt in enumerate(prompts):
        if len(prompt) + max_new_tokens > positions:
            raise PredictionInputError(
                f"inputs[{index}]: the prompt has {len(prompt)} tokens and max_new_tokens is "
                f"{max_new_tokens}, more than the model's context of {positions} tokens; "
                "shorten the prompt or lower max_new_tokens",
                code="context_length_exceeded",
            )


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # decoders continue from the last position, so padding goes on the left
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    found: list[int] = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in found:
                found.append(token)
    return found


def _finish(
    tokenizer: Any,
    tokens: list[int],
    prompt_tokens: int,
    eos_ids: list[int],
    stops: list[str],
    max_new_tokens: int,
) -> Generation:
    # generate() fills a row that finished early with pad tokens (often eos itself)
    end = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
    ended_by_eos = end is not None
    produced = tokens[:end] if end is not None else tokens
    pad_id = tokenizer.pad_token_id
    while produced and produced[-1] == pad_id:
        produced = produced[:-1]
    text = tokenizer.decode(produced, skip_special_tokens=True)

    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return _generation(text[:cut], "stop", prompt_tokens, len(produced))
    if ended_by_eos:
        return _generation(text, "stop", prompt_tokens, len(produced) + 1)
    # no eos and no stop string in the text, yet short: a stop string spanning the prompt's end
    reason: Literal["stop", "length"] = "length" if len(produced) >= max_new_tokens else "stop"
    return _generation(text, reason, prompt_tokens, len(produced))


def _generation(
    text: str, reason: Literal["stop", "length"], prompt_tokens: int, completion_tokens: int
) -> Generation:
    return {
        "text": text,
        "finish_reason": reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }

"""Run a model on rows of token ids: classify them, or generate continuations.

Plain functions of (model, token ids, options) with no HTTP, cache or batching in sight:
the batcher tokenizes each request with its own tokenizer, puts the rows of several
requests into one call, and splits the results again. `classify` and `generate` do the
whole round trip for one model and a list of inputs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

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
    finish_reason: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    # asked for with logprobs: OpenAI's chat logprobs.content items, one per token
    logprobs: NotRequired[list[dict[str, Any]]]
    # a chat with tools whose reply called them: [{"name", "arguments"}]
    tool_calls: NotRequired[list[dict[str, str]]]


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # None: no top-k (the server does not take it from clients yet; the engine applies it)
    top_k: int | None = None
    n: int = 1  # sequences per input (the continuous batch decodes them as rows)
    logprobs: bool = False
    top_logprobs: int = 0
    # OpenAI's {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, parameters: Mapping[str, Any]) -> GenerationOptions:
        given = {k: v for k, v in parameters.items() if v is not None}
        stop = given.pop("stop", ())
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(stop=stops, **given)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def max_input_tokens(config: Any, requested: int = 512) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    return min(requested, positions) if isinstance(positions, int) and positions > 0 else requested


# ---- classification ----


def encode_texts(tokenizer: Any, texts: Sequence[str], limit: int) -> list[list[int]]:
    """Token ids per text, truncated to limit (the tokenizer keeps its closing special token)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=limit)
    return [list(ids) for ids in encoded["input_ids"]]


def prepare_texts(tokenizer: Any, inputs: Sequence[Any], config: Any) -> list[list[int]]:
    """The text classification plugin's prepare hook: token ids per input."""
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            raise PredictionInputError(
                f"inputs[{index}]: a classification model takes plain strings, not messages",
                code="unsupported_input",
            )
    return encode_texts(tokenizer, inputs, max_input_tokens(config))


def text_probabilities(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    extra: Mapping[str, Any],
) -> torch.Tensor:
    """The text classification plugin's forward hook."""
    return class_probabilities(model, rows, pad_id, extra)


def class_probabilities(
    model: Any, rows: Sequence[Sequence[int]], pad_id: int, extra: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Softmax over the labels, one row per input (float32, on the CPU). Rows are padded on
    the right; decoders find their last real token through config.pad_token_id."""
    ids, mask = pad_rows(rows, pad_id, left=False)
    device = device_of(model)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **(extra or {}))
    return logits.logits.float().softmax(dim=-1).cpu()


def to_classification(
    probs: Sequence[float], labels: Sequence[str], top_k: int | None
) -> Classification:
    """`scores` holds the top_k best labels (all when None), highest first."""
    ranked = sorted(enumerate(probs), key=lambda item: item[1], reverse=True)
    kept = ranked[:top_k] if top_k is not None else ranked
    best_index, best_score = ranked[0]

    def name(i: int) -> str:
        return labels[i] if i < len(labels) else str(i)

    return {
        "label": name(best_index),
        "score": float(best_score),
        "scores": {name(i): float(p) for i, p in kept},
    }


def classify(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[str],
    top_k: int | None = None,
    batch_size: int = 32,
) -> list[Classification]:
    """Classify texts with a plain (unshared) model."""
    rows = encode_texts(tokenizer, texts, max_input_tokens(model.config))
    pad_id = _pad_id(model, tokenizer)
    results: list[Classification] = []
    for start in range(0, len(rows), batch_size):
        probs = class_probabilities(model, rows[start : start + batch_size], pad_id)
        results += [to_classification(p.tolist(), labels, top_k) for p in probs]
    return results


# ---- generation ----

# generate() samples from torch's global RNG, shared by every thread. Seeded requests are
# reproducible only if no other sampling runs between the seeding and the end of theirs,
# so every sampled generation holds this lock (greedy decoding uses no randomness).
_SAMPLING_LOCK = threading.Lock()


def encode_prompt(tokenizer: Any, item: PromptInput, index: int) -> list[int]:
    if isinstance(item, str):
        ids = tokenizer(item, add_special_tokens=True)["input_ids"]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise PredictionInputError(
                f"inputs[{index}]: this model has no chat template; send a plain string prompt",
                code="chat_template_missing",
            )
        messages = [_template_message(m) for m in item["messages"]]
        tools = rendered_tools(item)
        text = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
        # the template already wrote any bos/eos it wants; adding them again would double them
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PredictionInputError(f"inputs[{index}]: the prompt encodes to no tokens")
    return list(ids)


def _template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as chat templates take it: tool call arguments as a JSON object (OpenAI
    sends a string; Llama 3's template would write a string as a quoted string)."""
    out = {k: v for k, v in message.items() if v is not None}
    if out.get("tool_calls"):
        calls = []
        for call in out["tool_calls"]:
            function = dict(call["function"])
            try:
                arguments = json.loads(function["arguments"])
            except (TypeError, ValueError):
                arguments = None
            if isinstance(arguments, dict):
                function["arguments"] = arguments
            calls.append({**call, "function": function})
        out["tool_calls"] = calls
    return out


def rendered_tools(item: PromptInput) -> list[dict[str, Any]] | None:
    """The tools a chat input shows its model: none when it has none or tool_choice is
    "none" (the model then answers in text)."""
    if isinstance(item, str) or not item.get("tools") or item.get("tool_choice") == "none":
        return None
    return [dict(t) for t in item["tools"]]


def check_context(config: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    positions = getattr(config, "max_position_embeddings", None)
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


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    found: list[int] = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in found:
                found.append(token)
    return found


def generate_tokens(
    model: Any,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    *,
    pad_id: int,
    eos: Sequence[int],
    tokenizer: Any,
    extra: Mapping[str, Any] | None = None,
) -> list[list[int]]:
    """The new token ids of each prompt with one generate() call and one set of options
    (rows that finished early end in padding). The server's engine decodes row by row
    instead (worker/inference/scheduler.py); this serves callers with a plain model."""
    input_ids, attention_mask = pad_rows(prompts, pad_id, left=True)
    device = device_of(model)
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "eos_token_id": list(eos) or None,
        "pad_token_id": pad_id,
        **(extra or {}),
    }
    if options.stop:
        kwargs |= {"stop_strings": list(options.stop), "tokenizer": tokenizer}
    if options.sampled:
        # top_k=0 turns off the library's default top-k so top_p alone shapes the distribution
        kwargs |= {
            "do_sample": True,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "top_k": options.top_k or 0,
        }
    else:
        kwargs["do_sample"] = False
    seed = options.seed if options.sampled else None
    rng_guard: AbstractContextManager[Any] = _SAMPLING_LOCK if options.sampled else nullcontext()
    with rng_guard, _seeded(seed, device), torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
        )
    return [list(row) for row in output[:, input_ids.shape[1] :].cpu().tolist()]


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
    """Continue each input with a plain (unshared) model; temperature 0 decodes greedily.
    `text` holds only new tokens, cut before the first stop string."""
    options = GenerationOptions.of(
        {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": stop,
            "seed": seed,
        }
    )
    prompts = [encode_prompt(tokenizer, item, i) for i, item in enumerate(inputs)]
    check_context(model.config, prompts, options.max_new_tokens)
    eos = eos_ids(model, tokenizer)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _pad_id(model, tokenizer)
    )
    new = generate_tokens(model, prompts, options, pad_id=pad_id, eos=eos, tokenizer=tokenizer)
    return [
        finish(tokenizer, tokens, len(prompt), eos, options)
        for tokens, prompt in zip(new, prompts, strict=True)
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


def produced_tokens(
    tokens: Sequence[int], eos: Sequence[int], pad_id: int | None
) -> tuple[list[int], bool]:
    """The generated tokens before eos and padding, and whether eos ended them."""
    # generate() fills a row that finished early with pad tokens (often eos itself)
    end = next((i for i, t in enumerate(tokens) if t in eos), None)
    produced = list(tokens[:end] if end is not None else tokens)
    while produced and produced[-1] == pad_id:
        produced.pop()
    return produced, end is not None


def cut_at_stop(text: str, stops: Sequence[str]) -> int:
    """Where the first stop string starts in text, or -1."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def finish(
    tokenizer: Any,
    tokens: Sequence[int],
    prompt_tokens: int,
    eos: Sequence[int],
    options: GenerationOptions,
) -> Generation:
    produced, ended_by_eos = produced_tokens(tokens, eos, tokenizer.pad_token_id)
    text = tokenizer.decode(produced, skip_special_tokens=True)
    cut = cut_at_stop(text, options.stop)
    if cut >= 0:
        return _generation(text[:cut], "stop", prompt_tokens, len(produced))
    if ended_by_eos:
        return _generation(text, "stop", prompt_tokens, len(produced) + 1)
    # no eos and no stop string in the text, yet short: a stop string spanning the prompt's end
    full = len(produced) >= options.max_new_tokens
    reason: Literal["stop", "length"] = "length" if full else "stop"
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


# ---- padding ----


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask; decoders continue from the last position, so
    generation pads on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.tensor(list(row), dtype=torch.long)
        mask[index, span] = 1
    return ids, mask


def _pad_id(model: Any, tokenizer: Any) -> int:
    configured = getattr(model.config, "pad_token_id", None)
    if isinstance(configured, int):
        return configured
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

"""Preference rows as token features for DPO (the worker's half; imports the tokenizer side
of causal-LM training): each row becomes its chosen and its rejected sequence, each with
labels only on the answer, encoded exactly as supervised training encodes a prompt and a
completion (or a chat and its last assistant turn)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from task_plugins.base import Row
from task_plugins.causal_lm.training import _chat_tokens as chat_tokens
from task_plugins.causal_lm.training import (
    _prompt_completion_tokens as prompt_completion_tokens,
)
from worker.training.features import Encoded
from worker.training.metrics import IGNORE_INDEX


def answer_tokens(
    prompt: str | list[dict[str, str]], answer: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of the prompt and one answer, labels on the answer only."""
    if isinstance(prompt, str):
        return prompt_completion_tokens({"prompt": prompt, "completion": answer}, tokenizer)
    input_ids, labels = chat_tokens([*prompt, {"role": "assistant", "content": answer}], tokenizer)
    return input_ids, last_labelled_run(labels)


def last_labelled_run(labels: list[int]) -> list[int]:
    """Only the last run of labelled tokens (the answer) keeps its labels: assistant turns
    inside a multi-turn prompt are context here, not what the preference is about."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:end] + [IGNORE_INDEX] * (len(labels) - end)


def encode_preference(
    rows: list[Row], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Encoded:
    """chosen_/rejected_ input_ids and labels per row; a row longer than max_length (either
    answer) is truncated and counted, and one left with no answer token is dropped."""
    encoded = Encoded([])
    for row in rows:
        features: dict[str, list[int]] = {}
        truncated = dropped = False
        for side in ("chosen", "rejected"):
            input_ids, labels = answer_tokens(row["prompt"], row[side], tokenizer)
            if len(input_ids) > max_length:
                truncated = True
                input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                dropped = True
            features[f"{side}_input_ids"] = input_ids
            features[f"{side}_labels"] = labels
        encoded.truncated += truncated
        if dropped:
            encoded.dropped += 1
            continue
        encoded.features.append(features)
    return encoded

"""The causal LM task's encoding: the loss on what the model should learn, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from task_plugins.causal_lm.training import (
    DEFAULT_CHAT_TEMPLATE,
    encode_causal,
    prepare_chat_template,
)
from worker.training.features import prepare_tokenizer
from worker.training.metrics import IGNORE_INDEX


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_llama)


def trained_text(tokenizer: PreTrainedTokenizerBase, features: dict[str, Any]) -> list[str]:
    """The decoded runs of tokens that carry a loss."""
    runs: list[list[int]] = []
    previous_trained = False
    for token, label in zip(features["input_ids"], features["labels"], strict=True):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token
            if not previous_trained:
                runs.append([])
            runs[-1].append(token)
        previous_trained = trained
    return [str(tokenizer.decode(run)) for run in runs]


def test_prompt_completion_loss_on_completion_only(
    llama_tokenizer: PreTrainedTokenizerBase,
) -> None:
    rows = [{"prompt": "question: what is 3 ? answer:", "completion": " 3"}]
    features = encode_causal(rows, llama_tokenizer, max_length=64).features[0]
    assert trained_text(llama_tokenizer, features) == [" 3</s>"]
    assert features["input_ids"][-1] == llama_tokenizer.eos_token_id
    assert features["attention_mask"] == [1] * len(features["input_ids"])


def test_chat_loss_on_assistant_turns_only(llama_tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "world is great"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "yes"},
    ]
    features = encode_causal([{"messages": messages}], llama_tokenizer, max_length=256).features[0]
    # The role header is context; the content and the template's end of turn are learned.
    assert trained_text(llama_tokenizer, features) == ["world is great</s>\n", "yes</s>\n"]


def test_chat_spans_fall_back_to_the_content(llama_tokenizer: PreTrainedTokenizerBase) -> None:
    # A template that renders a system line only on a full chat: prefixes do not match.
    tokenizer = AutoTokenizer.from_pretrained(llama_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% if messages|length > 2 %}<|system|>\n{% endif %}" + DEFAULT_CHAT_TEMPLATE
    )
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "world"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "yes"},
    ]
    features = encode_causal([{"messages": messages}], tokenizer, max_length=256).features[0]
    # The first turn falls back to its content; the last renders consistently again.
    assert trained_text(tokenizer, features) == ["world", "yes</s>\n"]


def test_causal_truncation_counts_and_drops_rows_without_labels(
    llama_tokenizer: PreTrainedTokenizerBase,
) -> None:
    rows = [
        {"prompt": "hello world, how are you today? " * 4, "completion": " fine"},
        {"prompt": "hi", "completion": " the movie was great and i loved it"},
        {"prompt": "a", "completion": " b"},
    ]
    encoded = encode_causal(rows, llama_tokenizer, max_length=6)
    assert encoded.truncated == 2 and encoded.dropped == 1
    assert [len(features["input_ids"]) for features in encoded.features] == [6, 3]


def test_prepare_tokenizer_sets_pad_and_default_chat_template(tiny_gpt2: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token = None
    tokenizer.chat_template = None
    notes: list[tuple[str, str]] = []
    prepare_tokenizer(tokenizer, lambda level, text: notes.append((level, text)))
    prepare_chat_template(tokenizer, {"chat"}, lambda level, text: notes.append((level, text)))
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.padding_side == "right"
    assert [level for level, _ in notes] == ["info", "info"]

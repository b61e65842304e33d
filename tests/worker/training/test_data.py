"""Splitting and tokenizing, without training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.worker.training.conftest import make_spec
from worker.training.data import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    PadCollator,
    encode_causal,
    encode_classification,
    load_splits,
    prepare_tokenizer,
    sort_labels,
    split_rows,
)
from worker.training.spec import TrainingFailure, parse_spec


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


def test_split_is_seeded_stratified_and_keeps_every_label_in_training() -> None:
    rows = [{"text": str(i), "label": "a"} for i in range(16)]
    rows += [{"text": str(i), "label": "b"} for i in range(4)] + [{"text": "x", "label": "rare"}]
    train, validation = split_rows(rows, 0.2, seed=3, stratify_by="label")
    assert len(validation) == 4 and len(train) == 17
    assert Counter(row["label"] for row in validation) == {"a": 3, "b": 1}
    assert {row["label"] for row in train} == {"a", "b", "rare"}
    assert split_rows(rows, 0.2, seed=3, stratify_by="label") == (train, validation)
    assert split_rows(rows, 0.2, seed=4, stratify_by="label") != (train, validation)


def test_split_takes_at_least_one_row() -> None:
    rows = [{"prompt": str(i), "completion": "x"} for i in range(5)]
    train, validation = split_rows(rows, 0.01, seed=0)
    assert len(validation) == 1 and len(train) == 4


def test_labels_sort_numerically_when_all_are_integers() -> None:
    assert sort_labels({"10", "2", "-1"}) == ["-1", "2", "10"]
    assert sort_labels({"b", "10", "2"}) == ["10", "2", "b"]


def test_load_splits_uses_validation_file_and_sorted_labels(
    tmp_path: Path, tiny_bert: Path
) -> None:
    rows: list[dict[str, Any]] = [
        {"text": "a", "label": "z"},
        {"text": "b", "label": "y"},
        {"text": "c", "label": 1},
    ]
    spec = parse_spec(
        make_spec(tmp_path, "classification", tiny_bert, rows, [{"text": "d", "label": "y"}])
    )
    splits = load_splits(spec)
    assert splits.labels == ["1", "y", "z"]
    assert len(splits.train) == 3 and splits.validation == [{"text": "d", "label": "y"}]
    assert splits.formats == {"classification"}


def test_load_splits_refuses_a_format_the_task_cannot_train(
    tmp_path: Path, tiny_llama: Path
) -> None:
    rows = [{"text": "a", "label": "z"}] * 4
    spec = parse_spec(make_spec(tmp_path, "causal-lm", tiny_llama, rows))
    with pytest.raises(TrainingFailure) as caught:
        load_splits(spec)
    assert caught.value.code == "invalid_training_file"
    assert caught.value.param == "training_file"
    assert "needs chat or prompt-completion rows" in caught.value.message


def test_classification_truncation_keeps_special_tokens(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [
        {"text": "the movie was great and i loved it " * 3, "label": "p"},
        {"text": "bad", "label": "n"},
    ]
    encoded = encode_classification(rows, tokenizer, {"n": 0, "p": 1}, max_length=8)
    assert encoded.truncated == 1
    long, short = encoded.features
    assert len(long["input_ids"]) == 8 and long["labels"] == 1 and short["labels"] == 0
    assert long["input_ids"][-1] == tokenizer.sep_token_id
    assert {"input_ids", "attention_mask", "labels"} <= set(long)


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
    prepare_tokenizer(tokenizer, {"chat"}, lambda level, text: notes.append((level, text)))
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.padding_side == "right"
    assert [level for level, _ in notes] == ["info", "info"]


def test_pad_collator_pads_right() -> None:
    batch = PadCollator(pad_token_id=3)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    scalar = PadCollator(0)([{"input_ids": [1], "labels": 2}, {"input_ids": [1, 2], "labels": 0}])
    assert scalar["labels"].tolist() == [2, 0]

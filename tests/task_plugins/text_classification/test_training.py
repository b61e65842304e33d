"""The classification task's encoding, without training."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from task_plugins.text_classification.training import encode_classification


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

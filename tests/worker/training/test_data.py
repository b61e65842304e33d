"""Reading and splitting the data, and padding batches, without training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.failures import Failure
from app.jobs.spec import parse_spec
from tests.worker.training.conftest import make_spec
from worker.training.data import load_splits, sort_labels, split_rows
from worker.training.features import PadCollator


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
    with pytest.raises(Failure) as caught:
        load_splits(spec)
    assert caught.value.code == "invalid_training_file"
    assert caught.value.param == "training_file"
    assert "needs chat or prompt-completion rows" in caught.value.message


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

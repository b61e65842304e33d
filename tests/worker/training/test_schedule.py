"""When the trainer evaluates, checkpoints, stops early, pauses and resumes; which
checkpoint it exports. Tiny models on CPU, the trainer called from Python."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from app.jobs.spec import EarlyStopping, Hyperparameters
from tests.worker.training.conftest import make_spec, read_events, sentiment_rows
from worker.training import run
from worker.training.layout import PAUSE_FILENAME, checkpoint_steps
from worker.training.schedule import TrainingSchedule

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

    # without a selection there is no best to keep: locally, only the latest checkpoint stays
    kept = checkpoint_steps(Path(spec["output_dir"]) / "checkpoints")
    assert kept == [12]
    assert all(c["best_step"] is None for c in checkpoints)
    assert result["result_step"] == 12


def exported_is(spec: dict[str, Any], step: int) -> bool:
    """Whether the exported model holds the weights of the checkpoint of `step`, byte for byte
    (the outbox keeps every checkpoint's files: nothing uploads them in these tests)."""
    checkpoint = Path(spec["output_dir"]) / "outbox" / f"step-{step}"
    exported = Path(spec["output_dir"]) / "model"
    return filecmp.cmp(
        checkpoint / "adapter_model.safetensors",
        exported / "adapter_model.safetensors",
        shallow=False,
    )


def manifest_of_export(spec: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(
        (Path(spec["output_dir"]) / "model" / "tunery.json").read_text()
    )
    return manifest


def noisy_warnings(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["message"]
        for e in of_type(events, "message")
        if e["level"] == "warning" and "differences between checkpoints" in e["message"]
    ]


def test_the_default_exports_the_final_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    spec = classification_spec(tmp_path, tiny_bert, eval_steps=2)
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    evals = of_type(events, "eval")
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10, 12]
    # the last step, whatever the earlier evaluations scored
    assert (result["result_step"], result["result_reason"], result["best_step"]) == (
        12,
        "final",
        None,
    )
    assert result["metrics"] == {
        k: v for k, v in evals[-1].items() if k not in ("type", "step", "epoch")
    }
    assert exported_is(spec, 12)
    manifest = manifest_of_export(spec)
    assert (manifest["step"], manifest["result_reason"], manifest["best_step"]) == (
        12,
        "final",
        None,
    )
    # nothing is picked on the 4 validation rows, so there is nothing to warn about
    assert noisy_warnings(events) == []


def test_best_metric_chooses_the_exported_checkpoint(tmp_path: Path, tiny_bert: Path) -> None:
    spec = classification_spec(tmp_path, tiny_bert, eval_steps=2, best_metric="eval_loss")
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    evals = of_type(events, "eval")
    lowest = min(evals, key=lambda e: e["eval_loss"])
    assert (result["result_step"], result["result_reason"], result["best_step"]) == (
        lowest["step"],
        "best_metric",
        lowest["step"],
    )
    assert exported_is(spec, lowest["step"])
    assert manifest_of_export(spec)["step"] == lowest["step"]
    # locally, the latest and the best checkpoint stay
    kept = checkpoint_steps(Path(spec["output_dir"]) / "checkpoints")
    assert kept == sorted({12, lowest["step"]})


def test_a_selection_on_a_small_validation_set_is_warned_about(
    tmp_path: Path, tiny_bert: Path
) -> None:
    spec = classification_spec(tmp_path, tiny_bert, n_epochs=1, best_metric="accuracy")
    events: list[dict[str, Any]] = []
    run.train(spec, events.append)
    (warning,) = noisy_warnings(events)
    assert warning.startswith(
        "the validation set has 4 rows, and this job picks its checkpoint by accuracy on it "
        "(best_metric)"
    )
    assert "at least 200 rows" in warning and "leave best_metric" in warning
    # said once, before the first evaluation
    said = next(i for i, e in enumerate(events) if e.get("message") == warning)
    assert said < next(i for i, e in enumerate(events) if e["type"] == "eval")


def test_the_warning_needs_a_selection_and_a_small_set() -> None:
    said: list[tuple[str, str]] = []

    def note(level: str, text: str) -> None:
        said.append((level, text))

    run.warn_if_selection_is_noisy(Hyperparameters(), 10, note)
    run.warn_if_selection_is_noisy(Hyperparameters(best_metric="eval_loss"), 200, note)
    assert said == []
    run.warn_if_selection_is_noisy(Hyperparameters(best_metric="eval_loss"), 199, note)
    run.warn_if_selection_is_noisy(Hyperparameters(early_stopping=EarlyStopping()), 80, note)
    assert [level for level, _ in said] == ["warning", "warning"]
    assert said[0][1].startswith("the validation set has 199 rows")
    assert said[1][1].startswith(
        "the validation set has 80 rows, and this job picks its checkpoint by eval_loss on it "
        "(early_stopping)"
    )


def evaluate(schedule: TrainingSchedule, step: int, **figures: float) -> bool:
    """Hand the schedule one evaluation; True when it stops training."""
    control = TrainerControl()
    state = TrainerState()
    state.global_step = step
    schedule.on_evaluate(
        TrainingArguments(output_dir="unused", report_to="none"),
        state,
        control,
        metrics={f"eval_{name}": value for name, value in figures.items()},
    )
    return bool(control.should_training_stop)


def test_min_delta_is_relative_to_the_best_value_by_default() -> None:
    hp = Hyperparameters(early_stopping=EarlyStopping(patience=1))
    assert hp.early_stopping is not None and hp.early_stopping.min_delta == 0.01
    schedule = TrainingSchedule(hp, "classification", lambda: False, lambda event: None)
    assert not evaluate(schedule, 1, loss=0.2150)
    # better by 0.0027, more than 1% of 0.2150: an improvement
    assert not evaluate(schedule, 2, loss=0.2123)
    # better in the fourth decimal only: noise, and patience 1 stops the run
    assert evaluate(schedule, 3, loss=0.2120)
    assert schedule.stopped_early is not None and schedule.stopped_early["best_step"] == 3
    # the export is still the best value (0.2120 is lower, if not by enough to go on)
    assert schedule.result is not None and schedule.result.step == 3

    # higher-is-better metrics: 1% of the best accuracy
    hp = Hyperparameters(early_stopping=EarlyStopping(patience=1, metric="accuracy"))
    schedule = TrainingSchedule(hp, "classification", lambda: False, lambda event: None)
    assert not evaluate(schedule, 1, loss=0.5, accuracy=0.900)
    assert not evaluate(schedule, 2, loss=0.5, accuracy=0.925)
    assert evaluate(schedule, 3, loss=0.5, accuracy=0.930)
    assert schedule.result is not None and schedule.result.step == 3


def test_an_absolute_min_delta_counts_in_the_metric_units() -> None:
    early = EarlyStopping(patience=1, min_delta=0.001, relative=False)
    schedule = TrainingSchedule(
        Hyperparameters(early_stopping=early), "classification", lambda: False, lambda e: None
    )
    assert not evaluate(schedule, 1, loss=0.2150)
    assert not evaluate(schedule, 2, loss=0.2123)
    assert not evaluate(schedule, 3, loss=0.2110)
    assert evaluate(schedule, 4, loss=0.2105)


def test_best_metric_picks_the_first_of_equal_evaluations(tmp_path: Path, tiny_bert: Path) -> None:
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


def test_early_stopping_stops_and_exports_the_best(tmp_path: Path, tiny_bert: Path) -> None:
    # no evaluation can improve eval_loss by 10 (in its units): the second one stops the run
    spec = classification_spec(
        tmp_path,
        tiny_bert,
        n_epochs=3,
        eval_steps=2,
        early_stopping={"patience": 1, "min_delta": 10.0, "relative": False},
    )
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    (stopped,) = of_type(events, "early_stopped")
    assert stopped["step"] == 4 and stopped["metric"] == "eval_loss"
    assert stopped["patience"] == 1 and stopped["min_delta"] == 10.0
    assert stopped["relative"] is False
    assert stopped["message"].startswith(
        "Early stopping at step 4: eval_loss has not fallen by more than 10 for 1 evaluation(s)"
    )
    assert result["stopped_early"] == {
        k: v for k, v in stopped.items() if k not in ("type", "message")
    }
    assert of_type(events, "progress")[-1]["step"] == 4 < events[0]["total_steps"]
    # early stopping without best_metric exports the best by its own metric
    lowest = min(of_type(events, "eval"), key=lambda e: e["eval_loss"])
    assert (result["result_step"], result["result_reason"], result["best_step"]) == (
        lowest["step"],
        "early_stopping",
        lowest["step"],
    )
    assert exported_is(spec, lowest["step"])
    (warning,) = noisy_warnings(events)
    assert "by eval_loss on it (early_stopping)" in warning


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

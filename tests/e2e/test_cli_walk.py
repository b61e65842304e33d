"""The README's CLI walk: `tunery` as a subprocess against a live embedded server.

upload (a bad file, then a good one) -> jobs create --spec ... -> jobs watch (exit 0) ->
metrics (table, plot) -> deployments create --wait -> predict -> models download; and the
exit codes of a job that fails (1) and one that is cancelled (3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import live
from tests.support.data import sentiment_rows, write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> Iterator[live.LiveServer]:
    with live.embedded(tmp_path_factory.mktemp("cli") / "data", tiny_models) as srv:
        yield srv


def tunery(
    server: live.LiveServer, *args: str, expect: int = 0, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.update(TUNERY_BASE_URL=server.base_url, NO_COLOR="1")
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == expect, (
        f"tunery {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{server.log_tail()}"
    )
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def test_cli_walk(server: live.LiveServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": 3}\nnot json\n')
    report = tunery(server, "files", "upload", str(bad), expect=1)
    assert "status   error" in report.stdout
    assert "line 2:" in report.stdout and "line 3:" in report.stdout, report.stdout

    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(48))
    uploaded = tunery(server, "files", "upload", str(train))
    assert "status   processed" in uploaded.stdout
    assert "labels   " in uploaded.stdout and "positive 24" in uploaded.stdout
    file = as_json(tunery(server, "files", "get", uploaded.stdout.split()[0], "--json"))
    assert file["status"] == "processed" and file["stats"]["rows"] == 48
    assert file["id"] in tunery(server, "files", "list").stdout

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "model: tiny-bert\n"
        "seed: 3\n"
        "method:\n"
        "  type: supervised\n"
        "  supervised:\n"
        "    hyperparameters: {n_epochs: 2, batch_size: 8}\n"
    )
    job = as_json(
        tunery(
            server,
            "jobs",
            "create",
            "--spec",
            str(spec),
            "--training-file",
            file["id"],
            "--learning-rate",
            "0.003",
            "--max-seq-length",
            "32",
            "--suffix",
            "cli",
            "--lora-r",
            "4",
            "--json",
        )
    )
    assert job["hyperparameters"]["n_epochs"] == 2  # from the spec
    assert job["hyperparameters"]["learning_rate"] == 0.003  # from a flag
    assert job["training_type"]["type"] == "lora" and job["training_type"]["r"] == 4

    watched = tunery(server, "jobs", "watch", job["id"], "--print-every", "0", "--interval", "0.5")
    assert "Succeeded in" in watched.stdout, watched.stdout
    progress = watched.stderr
    for piece in (
        "step ",
        "epoch ",
        "loss ",
        "eval_loss" if "accuracy" not in progress else "accuracy",
    ):
        assert piece in progress, progress
    assert "100%" in progress
    model = as_json(tunery(server, "jobs", "get", job["id"], "--json"))["fine_tuned_model"]
    assert model == f"ft:tiny-bert:cli:{job['id']}"
    assert "trained tokens" in tunery(server, "jobs", "get", job["id"]).stdout

    table = tunery(server, "jobs", "metrics", job["id"]).stdout
    assert "TRAIN_LOSS" in table and "EVAL_LOSS" in table and "Confusion matrix" in table
    plot = tunery(server, "jobs", "metrics", job["id"], "--plot").stdout
    assert "train_loss" in plot and "┤" in plot
    events = tunery(server, "jobs", "events", job["id"], "--limit", "100").stdout
    assert "Job succeeded" in events or "succeeded" in events.splitlines()[-1]

    assert model in tunery(server, "models", "list").stdout
    dep = as_json(tunery(server, "deployments", "create", model, "--wait", "--json"))
    assert dep["status"] == "ready", dep
    assert dep["id"] in tunery(server, "deployments", "list").stdout

    predicted = as_json(
        tunery(server, "predict", dep["id"], "the movie was great", "it was awful", "--json")
    )
    labels = [p["label"] for p in predicted["predictions"]]
    assert len(labels) == 2 and set(labels) <= {"positive", "negative"}
    # by model name, as text: one line per input, label first
    lines = tunery(server, "predict", model, "the movie was great").stdout.splitlines()
    assert lines and lines[0].split("\t")[0] in {"positive", "negative"}

    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert (
        'tunery_inference_batch_size_sum{route="/v1/deployments/{dep_id}/predict"} 3.0' in metrics
    )
    assert "tunery_inference_request_duration_seconds_count" in metrics

    out = tmp_path / "download"
    downloaded = as_json(tunery(server, "models", "download", model, "-o", str(out), "--json"))
    folder = Path(downloaded["path"])
    assert folder.parent == out
    assert (folder / "adapter_model.safetensors").exists() and (folder / "tunery.json").exists()


def test_cli_errors_and_exit_codes(server: live.LiveServer, tmp_path: Path) -> None:
    unknown = tunery(
        server, "jobs", "create", "--model", "no-such-model", "--training-file", "x", expect=1
    )
    assert unknown.stderr.startswith("error: 400 Unknown model 'no-such-model'")
    assert "tiny-bert" in unknown.stderr  # says what is available
    missing = tunery(server, "jobs", "create", "--model", "tiny-bert", expect=1)
    assert "Give --training-file" in missing.stderr
    assert "No fine-tuning job" in tunery(server, "jobs", "get", "ftjob-nope", expect=1).stderr
    bad_hp = tunery(
        server,
        "jobs",
        "create",
        "--model",
        "tiny-bert",
        "--training-file",
        "file-x",
        "-H",
        "n_epochs=0",
        expect=1,
    )
    assert "n_epochs" in bad_hp.stderr, bad_hp.stderr
    offline = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "jobs",
            "list",
            "--base-url",
            f"http://127.0.0.1:{live.free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 1 and "Could not reach Tunery" in offline.stderr

    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32))
    validation = write_jsonl(
        tmp_path / "validation.jsonl",
        [{"text": f"so so number {i}", "label": "neutral"} for i in range(12)],
    )
    train_id = as_json(tunery(server, "files", "upload", str(train), "--json"))["id"]
    validation_id = as_json(tunery(server, "files", "upload", str(validation), "--json"))["id"]

    # a label the training data never had: the trainer refuses it, so the job fails
    failing = as_json(
        tunery(
            server,
            "jobs",
            "create",
            "-m",
            "tiny-bert",
            "-t",
            train_id,
            "-v",
            validation_id,
            "--json",
        )
    )
    failed = tunery(server, "jobs", "watch", failing["id"], "--interval", "0.5", expect=1)
    assert f"{failing['id']} failed:" in failed.stderr and "neutral" in failed.stderr

    long = as_json(
        tunery(
            server,
            "jobs",
            "create",
            "-m",
            "tiny-bert",
            "-t",
            train_id,
            "--n-epochs",
            "100",
            "--json",
        )
    )
    cancelled = tunery(server, "jobs", "cancel", long["id"])
    assert long["id"] in cancelled.stdout
    watched = tunery(server, "jobs", "watch", long["id"], "--interval", "0.5", expect=3)
    assert "was cancelled" in watched.stderr

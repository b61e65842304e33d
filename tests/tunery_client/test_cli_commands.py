"""The client verbs against the real API in-process (SQLite, and Postgres when reachable):
argv is parsed by the real `tunery` parser and the handler talks to the app through
FastAPI's TestClient. The subprocess walk against a live server is tests/e2e/test_cli_walk.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import httpx
import pytest

from app.cli import build_parser
from tests.app.conftest import Api
from tests.support.data import sentiment_rows, write_jsonl
from tunery_client.api import Client, ClientError


def run(api: Api, *argv: str, api_key: str | None = None) -> int:
    args = build_parser().parse_args(list(argv))
    client = Client(api_key=api_key or "", http=cast(httpx.Client, api.client))
    return int(args.handler(client, args))


def upload(api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(24))
    assert run(api, "files", "upload", str(path), "--json") == 0
    return str(json.loads(capsys.readouterr().out)["id"])


def test_upload_prints_the_report_with_line_numbers(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "".join(f'{{"text": "t{i}", "label": "a"}}\n' for i in range(12)) + '{"txt": 1}\n{oops\n'
    )
    assert run(api, "files", "upload", str(bad)) == 1  # unusable: scripts must stop here
    captured = capsys.readouterr()
    assert "status   error" in captured.out
    assert "  line 13: " in captured.out and "  line 14: " in captured.out
    assert "The file cannot be used: line 13" in captured.err

    file_id = upload(api, tmp_path, capsys)
    assert run(api, "files", "get", file_id) == 0
    report = capsys.readouterr().out
    assert "status   processed" in report and "rows     24" in report
    assert "labels   " in report and f"--training-file {file_id}" in report
    assert run(api, "files", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["ID", "FILENAME", "STATUS", "FORMAT", "ROWS", "SIZE", "CREATED"]
    assert any(line.startswith(file_id) for line in listing[1:])


def test_jobs_create_merges_spec_and_flags(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_id = upload(api, tmp_path, capsys)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "model": "tiny-bert",
                "hyperparameters": {"n_epochs": 2},  # OpenAI's older top-level shape
                "training_type": {"type": "lora", "r": 16, "alpha": 32},
                "metadata": {"team": "a"},
            }
        )
    )
    argv = [
        "jobs", "create", "--spec", str(spec), "--training-file", file_id,
        "--batch-size", "4", "--lora-r", "4", "--target-modules", "query,value",
        "--metadata", "run=7", "-H", "warmup_ratio=0.1", "--seed", "11", "--json",
    ]  # fmt: skip
    assert run(api, *argv) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["model"] == "tiny-bert" and job["seed"] == 11
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["batch_size"] == 4
    assert job["hyperparameters"]["warmup_ratio"] == 0.1
    assert job["training_type"]["r"] == 4 and job["training_type"]["alpha"] == 32
    assert job["training_type"]["target_modules"] == ["query", "value"]
    assert job["metadata"] == {"team": "a", "run": "7"}
    assert api.enqueued == [job["id"]]

    assert run(api, "jobs", "get", job["id"]) == 0
    text = capsys.readouterr().out
    assert ["id", job["id"]] in [line.split() for line in text.splitlines()]
    assert "lora (r=4" in text
    assert run(api, "jobs", "list") == 0
    assert job["id"] in capsys.readouterr().out
    assert run(api, "jobs", "cancel", job["id"]) == 0
    assert "cancel" in capsys.readouterr().out
    assert run(api, "jobs", "events", job["id"]) == 0
    assert "cancelled" in capsys.readouterr().out.lower()


def test_yaml_spec_and_flag_errors(api: Api, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("- not\n- a mapping\n")
    with pytest.raises(ClientError, match="must hold one mapping"):
        run(api, "jobs", "create", "--spec", str(spec))
    spec.write_text("model: tiny-bert\ntraining_file: file-nope\n")
    with pytest.raises(ClientError, match="does not exist; upload it") as info:
        run(api, "jobs", "create", "--spec", str(spec))
    assert info.value.status == 400 and info.value.param == "training_file"
    with pytest.raises(ClientError, match="--trainable-layers applies to --training-type freeze"):
        run(
            api,
            "jobs",
            "create",
            "-m",
            "tiny-bert",
            "-t",
            "x",
            "--training-type",
            "lora",
            "--trainable-layers",
            "1",
        )
    with pytest.raises(ClientError, match="--hyperparameter takes NAME=VALUE"):
        run(api, "jobs", "create", "-m", "tiny-bert", "-t", "x", "-H", "warmup")
    with pytest.raises(ClientError, match="Give --model"):
        run(api, "jobs", "create", "-t", "x")


def test_watch_returns_the_exit_code_of_the_outcome(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_id = upload(api, tmp_path, capsys)
    assert run(api, "jobs", "create", "-m", "tiny-bert", "-t", file_id, "--json") == 0
    job_id = json.loads(capsys.readouterr().out)["id"]
    run(api, "jobs", "cancel", job_id)  # queued: cancelled at once
    capsys.readouterr()
    started = time.monotonic()
    assert run(api, "jobs", "watch", job_id, "--interval", "0.1") == 3
    assert time.monotonic() - started < 30
    assert "was cancelled" in capsys.readouterr().err
    assert run(api, "jobs", "watch", job_id, "--json") == 3
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"


def test_metrics_models_and_deployments_views(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_id = upload(api, tmp_path, capsys)
    run(api, "jobs", "create", "-m", "tiny-bert", "-t", file_id, "--json")
    job_id = json.loads(capsys.readouterr().out)["id"]
    assert run(api, "jobs", "metrics", job_id) == 0
    assert "No metrics yet" in capsys.readouterr().out
    assert run(api, "jobs", "metrics", job_id, "--plot") == 0
    assert "nothing to plot yet" in capsys.readouterr().out
    assert run(api, "models", "list") == 0
    models = capsys.readouterr().out
    assert "tiny-bert" in models and "classification" in models
    assert run(api, "deployments", "list") == 0
    assert "No deployments" in capsys.readouterr().out
    assert run(api, "usage") == 0
    served = capsys.readouterr().out
    assert "requests served    0" in served and "completion tokens  0" in served
    assert run(api, "usage", "--json") == 0
    assert json.loads(capsys.readouterr().out)["object"] == "usage"
    # no deployment: the model is loaded just in time, by an inference server this fixture
    # does not run
    with pytest.raises(ClientError, match=r"inference server .* is not reachable") as info:
        run(api, "predict", "tiny-bert", "hello")
    assert info.value.status == 503
    with pytest.raises(ClientError, match="No fine-tuned model with id"):
        run(api, "models", "download", "ft:tiny-bert:x:ftjob-nope", "-o", str(tmp_path))


def test_metrics_prints_the_confusion_matrix_and_the_misclassified_examples(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a media evaluation records (worker/training/metrics.py) is what the table shows:
    each mistake's file, sample number, true and predicted label and score."""
    from app.jobs import repository
    from tests.app.jobs.test_lifecycle import sessions

    file_id = upload(api, tmp_path, capsys)
    run(api, "jobs", "create", "-m", "tiny-bert", "-t", file_id, "--json")
    job_id = json.loads(capsys.readouterr().out)["id"]
    wrong = [
        {"file": "cats/12.jpg", "index": 41, "label": "cat", "predicted": "dog", "score": 0.91},
        {"file": "dogs/3.jpg", "index": 7, "label": "dog", "predicted": "cat", "score": 0.62},
    ]
    with sessions(api)() as session:
        repository.add_metric(
            session,
            job_id,
            "eval",
            4,
            1.0,
            {
                "eval_loss": 0.5,
                "accuracy": 0.75,
                "per_class": {"cat": {"f1": 0.8}, "dog": {"f1": 0.7}},
                "confusion_matrix": [[5, 1], [1, 1]],
                "misclassified": wrong,
            },
        )
        session.commit()
    assert run(api, "jobs", "metrics", job_id) == 0
    out = capsys.readouterr().out
    assert "Confusion matrix at step 4" in out
    table = out.split("Misclassified at step 4", 1)[1].splitlines()[1:]
    assert table[0].split() == ["FILE", "SAMPLE", "TRUE", "PREDICTED", "SCORE"]
    assert table[1].split()[:4] == ["cats/12.jpg", "41", "cat", "dog"]
    assert table[2].split()[:4] == ["dogs/3.jpg", "7", "dog", "cat"]
    assert "0.91" in table[1] and "0.62" in table[2]


def test_the_api_key_is_sent_as_a_bearer_token(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.auth import create_key

    make_session = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with make_session() as session:
        _, key = create_key(session, "cli")
        session.commit()
    with pytest.raises(ClientError, match="Missing API key") as info:
        run(api, "files", "list")
    assert info.value.status == 401
    assert run(api, "files", "list", api_key=key) == 0
    assert "No files yet" in capsys.readouterr().out


def test_jobs_create_dpo_spec_keeps_flags_under_method_dpo(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    assert run(api, "files", "upload", str(path), "--json") == 0
    file_id = str(json.loads(capsys.readouterr().out)["id"])
    spec = tmp_path / "dpo.json"
    spec.write_text(
        json.dumps(
            {
                "model": "tiny-llama",
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
            }
        )
    )
    argv = ["jobs", "create", "--spec", str(spec), "--training-file", file_id]
    assert run(api, *argv, "--batch-size", "4", "--json") == 0
    job = json.loads(capsys.readouterr().out)
    hp = job["method"]["dpo"]["hyperparameters"]
    assert job["method"]["type"] == "dpo" and hp["beta"] == 0.2 and hp["batch_size"] == 4

"""The issue's walk against a live server and the local Hub, on the embedded default and on
Postgres + Redis: `tunery models pull` (a subprocess) -> a job on the pulled base -> deploy
-> predict; then the base cannot be removed while the tuned model needs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.hub.conftest import BERT, hub  # noqa: F401 - the hub fixture
from tests.e2e.test_cli_walk import as_json, tunery
from tests.support import backends, live
from tests.support.data import sentiment_rows, write_jsonl
from tests.support.hub_server import FakeHub

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_pull_then_train_then_deploy(
    backend: backends.Backend,
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    sha = hub.repos[BERT].refs["main"]
    hub_env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    with live.for_backend(backend, tmp_path / "data", models, **hub_env) as server:
        pulled = tunery(server, "models", "pull", BERT, "--interval", "0.2")
        assert f"Pulled {BERT} at {sha}" in pulled.stdout, pulled.stdout
        assert as_json(tunery(server, "models", "get", BERT, "--json"))["sha"] == sha

        train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32))
        file = tunery(server, "files", "upload", str(train)).stdout.split()[0]
        job = as_json(
            tunery(
                server,
                *("jobs", "create", "--model", BERT, "--training-file", file),
                *("--n-epochs", "1", "--batch-size", "8", "--max-seq-length", "16"),
                *("--lora-r", "4", "--json"),
            )
        )
        assert job["model_sha"] == sha
        tunery(server, "jobs", "watch", job["id"], "--print-every", "0", "--interval", "0.5")
        model = as_json(tunery(server, "jobs", "get", job["id"], "--json"))["fine_tuned_model"]
        dep = as_json(tunery(server, "deployments", "create", model, "--wait", "--json"))
        assert dep["status"] == "ready", dep
        predicted = as_json(tunery(server, "predict", dep["id"], "the movie was great", "--json"))
        assert predicted["predictions"][0]["label"] in {"positive", "negative"}

        refused = tunery(server, "models", "delete", BERT, expect=1)
        assert "still needed" in refused.stderr and model in refused.stderr

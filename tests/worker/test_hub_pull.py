"""The walk with a base model from the (local) Hub, on both backends: a job on a Hub id with
TUNERY_HUB_AUTO_PULL on, its worker pulling the pinned commit with the progress in the
job's events, training, then deploying and predicting with the tuned model; the base can
not be removed while they need it.

The API runs in process, the runner is called directly (no broker), the prediction goes
through the inference server's service in process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import pytest
from huggingface_hub import constants

from app.models.registry import PULL_MARKER
from app.models.service import serving_spec
from tests.app.conftest import Api, upload_text
from tests.app.hub.conftest import LLAMA, hub  # noqa: F401 - the hub fixture
from tests.app.hub.test_pull_api import auto_api, hub_api  # noqa: F401 - fixtures
from tests.support.hub_server import FakeHub
from worker.supervisor import JobRunner

pytestmark = pytest.mark.slow

PROMPTS = "".join(
    json.dumps({"prompt": f"question: what is {i} ? answer:", "completion": f" {i % 10}"}) + "\n"
    for i in range(16)
)


def test_auto_pull_then_train_then_deploy(auto_api: Api, hub: FakeHub) -> None:  # noqa: F811
    api = auto_api
    sha = hub.repos[LLAMA].refs["main"]
    file = upload_text(api, "train.jsonl", PROMPTS)
    body: dict[str, Any] = {
        "model": LLAMA,
        "training_file": file["id"],
        "training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_length": 16}
            },
        },
    }
    response = api.client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    app_state = api.client.app.state  # type: ignore[attr-defined]
    settings = api.settings.model_copy(update={"heartbeat_seconds": 0.5, "trainer_threads": 1})
    runner = JobRunner(settings, app_state.sessionmaker, app_state.store)
    assert runner.run(job_id) == "succeeded"
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["model_sha"] == sha
    events = api.client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})
    messages = [e["message"] for e in reversed(events.json()["data"])]
    pulling = [i for i, m in enumerate(messages) if m.startswith(f"Pulling {LLAMA} at {sha}")]
    pulled = [i for i, m in enumerate(messages) if m.startswith(f"Pulled {LLAMA} at {sha}")]
    assert pulling and pulled and pulling[0] < pulled[0], messages
    # the pulled base is listed with its commit, like one pulled with POST /v1/models/pull
    assert api.client.get(f"/v1/models/{LLAMA}").json()["sha"] == sha

    tuned = job["fine_tuned_model"]
    deployment = api.client.post("/v1/deployments", json={"model": tuned})
    assert deployment.status_code == 200, deployment.text
    from worker.inference.loading import ModelSpec
    from worker.inference.service import InferenceService

    with app_state.sessionmaker() as session:
        spec = serving_spec(session, settings.models_dir or Path(), tuned)
    assert spec["base_model_dir"] == str(settings.models_dir / "tiny-org" / "tiny-llama")
    outputs = cast(
        list[Any],
        InferenceService(app_state.store).predict(
            ModelSpec(**spec), ["question: what is 3 ? answer:"], {"max_new_tokens": 2}
        ),
    )
    assert len(outputs) == 1

    response = api.client.delete(f"/v1/models/{LLAMA}")
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert f"model {tuned}" in message and deployment.json()["id"] in message


def test_a_worker_does_not_train_on_another_commit_than_the_jobs(
    hub_api: Api,  # noqa: F811
    hub: FakeHub,  # noqa: F811
) -> None:
    api = hub_api
    response = api.client.post("/v1/models/pull", json={"model": LLAMA})
    assert response.status_code == 202
    folder = api.settings.models_dir / "tiny-org" / "tiny-llama"
    for _ in range(600):
        if folder.is_dir():
            break
        time.sleep(0.05)
    file = upload_text(api, "train.jsonl", PROMPTS)
    job = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    ).json()
    # this worker's folder holds another commit (a folder per host, pulled at another time)
    marker = folder / PULL_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "sha": "0" * 40}))
    app_state = api.client.app.state  # type: ignore[attr-defined]
    runner = JobRunner(api.settings, app_state.sessionmaker, app_state.store)
    assert runner.run(job["id"]) == "failed"
    error = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["error"]
    assert error["code"] == "base_model_changed" and job["model_sha"] in error["message"]


def test_a_worker_that_cannot_reach_the_hub_fails_the_job_with_the_reason(
    auto_api: Api,  # noqa: F811
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = auto_api
    file = upload_text(api, "train.jsonl", PROMPTS)
    job = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    ).json()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # this worker runs offline
    app_state = api.client.app.state  # type: ignore[attr-defined]
    runner = JobRunner(api.settings, app_state.sessionmaker, app_state.store)
    assert runner.run(job["id"]) == "failed"
    error = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["error"]
    assert (error["code"], error["param"]) == ("hub_offline", "model")
    assert "HF_HUB_OFFLINE" in error["message"]

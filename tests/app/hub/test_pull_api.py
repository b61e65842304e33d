"""POST /v1/models/pull and friends, on both backends, against the local Hub: a good pull
shown with its commit, refusals, admin only, the commit on jobs, auto-pull on and off, and
removing a base that is still needed (409)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.auth import create_key
from app.db import session_scope
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import Api, upload_text
from tests.app.hub.conftest import BERT, CUSTOM_CODE, LLAMA, PICKLE_ONLY
from tests.support.hub_server import FakeHub, folder_files

PROMPTS = "".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(10))


def _api(migrated_database_url: str, tmp_path: Path, **settings: Any) -> Iterator[Api]:
    config = Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_database_url,
        models_dir=tmp_path / "models",
        inference_url="http://127.0.0.1:9",
        **settings,
    )
    app = create_app(config, reconciler=False)
    recorded: list[str] = []
    app.state.enqueue = recorded.append
    with TestClient(app) as client:
        yield Api(client, config, recorded)


@pytest.fixture
def hub_api(migrated_database_url: str, tmp_path: Path, hub: FakeHub) -> Iterator[Api]:
    yield from _api(migrated_database_url, tmp_path)


@pytest.fixture
def auto_api(migrated_database_url: str, tmp_path: Path, hub: FakeHub) -> Iterator[Api]:
    yield from _api(migrated_database_url, tmp_path, hub_auto_pull=True)


def pulled(api: Api, model: str, revision: str = "main") -> dict[str, Any]:
    response = api.client.post("/v1/models/pull", json={"model": model, "revision": revision})
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["status"] in ("queued", "running") and started["model"] == model
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = api.client.get(f"/v1/models/pulls/{started['id']}").json()
        if current["status"] not in ("queued", "running"):
            return dict(current)
        time.sleep(0.05)
    raise AssertionError(f"pull {started['id']} did not finish")


def test_pull_then_train_records_the_commit(hub_api: Api, hub: FakeHub) -> None:
    done = pulled(hub_api, LLAMA)
    sha = hub.repos[LLAMA].refs["main"]
    assert done["status"] == "succeeded" and done["sha"] == sha, done
    assert done["downloaded_bytes"] == done["total_bytes"] > 0
    assert done["downloaded_files"] == done["total_files"] > 0
    assert done["error"] is None and done["task"] == "causal-lm"
    model = hub_api.client.get(f"/v1/models/{LLAMA}").json()
    assert model["kind"] == "base" and model["sha"] == sha and model["task"] == "causal-lm"
    listed = {m["id"]: m for m in hub_api.client.get("/v1/models").json()["data"]}
    assert listed[LLAMA]["sha"] == sha
    assert [p["id"] for p in hub_api.client.get("/v1/models/pulls").json()["data"]] == [done["id"]]
    file = upload_text(hub_api, "train.jsonl", PROMPTS)
    job = hub_api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    ).json()
    assert job["model"] == LLAMA and job["model_sha"] == sha
    assert hub_api.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["model_sha"] == sha
    events = hub_api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert any(sha in e["message"] for e in events)


@pytest.mark.parametrize(
    ("model", "words"), [(PICKLE_ONLY, "pickle"), (CUSTOM_CODE, "custom code")]
)
def test_unsafe_repositories_are_refused_at_once(
    hub_api: Api, hub: FakeHub, model: str, words: str
) -> None:
    response = hub_api.client.post("/v1/models/pull", json={"model": model})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsafe_model" and words in error["message"]
    assert hub_api.client.get("/v1/models/pulls").json()["data"] == []
    assert hub_api.client.get(f"/v1/models/{model}").status_code == 404


def test_a_running_pull_is_joined_not_doubled(hub_api: Api, hub: FakeHub) -> None:
    hub.slow["model.safetensors"] = 3.0
    first = hub_api.client.post("/v1/models/pull", json={"model": LLAMA}).json()
    again = hub_api.client.post("/v1/models/pull", json={"model": LLAMA}).json()
    assert again["id"] == first["id"]
    other = hub_api.client.post("/v1/models/pull", json={"model": LLAMA, "revision": "v1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "pull_running"
    assert pulled(hub_api, LLAMA)["id"] == first["id"]
    assert len(hub.gets("model.safetensors")) == 1


def test_a_failed_pull_reports_why_and_a_second_pull_resumes(hub_api: Api, hub: FakeHub) -> None:
    hub.failing.add("model.safetensors")
    failed = pulled(hub_api, LLAMA)
    assert failed["status"] == "failed" and failed["error"]["code"] == "hub_unreachable"
    assert hub_api.client.get(f"/v1/models/{LLAMA}").status_code == 404
    hub.failing.clear()
    hub.requests.clear()
    done = pulled(hub_api, LLAMA)
    assert done["status"] == "succeeded"
    fetched = [p.rsplit("/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "resolve" in p]
    assert fetched == ["model.safetensors"]


def test_pulling_and_removing_are_for_the_admin_project(
    hub_api: Api, hub: FakeHub, tmp_path: Path
) -> None:
    done = pulled(hub_api, LLAMA)  # open mode (no keys yet): the one project is the admin
    with session_scope(hub_api.settings.database_url) as session:
        _, admin = create_key(session, "default")
        _, other = create_key(session, "team-b")
    as_other = {"Authorization": f"Bearer {other}"}
    response = hub_api.client.post("/v1/models/pull", json={"model": LLAMA}, headers=as_other)
    assert response.status_code == 403 and "TUNERY_ADMIN_PROJECT" in response.text
    assert hub_api.client.delete(f"/v1/models/{LLAMA}", headers=as_other).status_code == 403
    # everyone sees base models and pulls
    seen = hub_api.client.get(f"/v1/models/pulls/{done['id']}", headers=as_other)
    assert seen.status_code == 200
    response = hub_api.client.delete(
        f"/v1/models/{LLAMA}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert response.status_code == 200 and response.json()["deleted"] is True


def test_a_base_that_is_still_needed_is_not_removed(hub_api: Api, hub: FakeHub) -> None:
    pulled(hub_api, LLAMA)
    file = upload_text(hub_api, "train.jsonl", PROMPTS)
    job = hub_api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    ).json()
    response = hub_api.client.delete(f"/v1/models/{LLAMA}")
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "model_in_use" and f"job {job['id']}" in error["message"]
    folder = hub_api.settings.models_dir / "tiny-org" / "tiny-llama"
    assert folder.is_dir()
    assert hub_api.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    response = hub_api.client.delete(f"/v1/models/{LLAMA}")
    assert response.status_code == 200, response.text
    assert not folder.exists() and not (hub_api.settings.models_dir / "tiny-org").exists()
    assert hub_api.client.get(f"/v1/models/{LLAMA}").status_code == 404
    # a base put in TUNERY_MODELS_DIR by hand is the operator's to remove
    (hub_api.settings.models_dir / "by-hand").mkdir()
    by_hand = hub_api.client.get("/v1/models").json()["data"]
    assert all(m["sha"] is None for m in by_hand if m["kind"] == "base")


def test_a_base_that_is_still_needed_is_not_replaced_by_another_commit(
    hub_api: Api, hub: FakeHub, tiny_models: Path
) -> None:
    first = pulled(hub_api, LLAMA)["sha"]
    file = upload_text(hub_api, "train.jsonl", PROMPTS)
    job = hub_api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    ).json()
    second = hub.add(LLAMA, {**folder_files(tiny_models / "tiny-llama"), "extra.json": b"{}"})
    response = hub_api.client.post("/v1/models/pull", json={"model": LLAMA})
    assert response.status_code == 409, response.text
    message = response.json()["error"]["message"]
    assert f"job {job['id']}" in message and f"replaced by commit {second}" in message
    assert hub_api.client.get(f"/v1/models/{LLAMA}").json()["sha"] == first
    # the same commit again is no change: it succeeds at once, without a download
    hub.repos[LLAMA].refs["main"] = first
    hub.requests.clear()
    assert pulled(hub_api, LLAMA)["status"] == "succeeded"
    assert hub.gets("model.safetensors") == []


def test_auto_pull_off_names_the_pull_command(hub_api: Api, hub: FakeHub) -> None:
    file = upload_text(hub_api, "train.jsonl", PROMPTS)
    response = hub_api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    )
    assert response.status_code == 400
    assert f"tunery models pull {LLAMA}" in response.json()["error"]["message"]
    assert hub.requests == []  # off means off: the Hub is not asked
    response = hub_api.client.post("/v1/deployments", json={"model": LLAMA})
    assert response.status_code == 404
    assert f"tunery models pull {LLAMA}" in response.json()["error"]["message"]


def test_auto_pull_on_creates_the_job_with_the_pinned_commit(auto_api: Api, hub: FakeHub) -> None:
    file = upload_text(auto_api, "train.jsonl", PROMPTS)
    response = auto_api.client.post(
        "/v1/fine_tuning/jobs", json={"model": LLAMA, "training_file": file["id"]}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["model_sha"] == hub.repos[LLAMA].refs["main"] and job["task"] == "causal-lm"
    assert auto_api.enqueued == [job["id"]]
    events = auto_api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert any("pulls it from the Hub first" in e["message"] for e in events)
    # weights are the worker's to fetch; an unsafe repository is refused with the job
    assert hub.gets("model.safetensors") == []
    refused = auto_api.client.post(
        "/v1/fine_tuning/jobs", json={"model": PICKLE_ONLY, "training_file": file["id"]}
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsafe_model"


def test_auto_pull_on_deploys_a_hub_model_once_it_is_pulled(auto_api: Api, hub: FakeHub) -> None:
    sha = hub.repos[BERT].refs["main"]
    response = auto_api.client.post("/v1/deployments", json={"model": BERT})
    assert response.status_code == 200, response.text
    dep = response.json()
    assert dep["model"] == BERT
    pulls = auto_api.client.get("/v1/models/pulls").json()["data"]
    assert [(p["model"], p["sha"], p["status"]) for p in pulls] == [(BERT, sha, "succeeded")]
    assert auto_api.client.get(f"/v1/models/{BERT}").json()["sha"] == sha
    # then it loads (no inference server listens in this test: the load is what fails)
    loaded = auto_api.client.get(f"/v1/deployments/{dep['id']}").json()
    assert loaded["status"] == "failed" and "pull" not in loaded["error"]["code"], loaded
    # a pull that fails fails the deployment with the pull's error
    hub.failing.add("model.safetensors")
    dep = auto_api.client.post("/v1/deployments", json={"model": LLAMA}).json()
    failed = auto_api.client.get(f"/v1/deployments/{dep['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "hub_unreachable"

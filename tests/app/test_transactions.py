"""No route holds a database transaction while it waits on the inference server or the
broker: every call into them, on every route that makes one, finds no transaction open and
no pooled connection checked out (tests/app/inference_fake.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from app.main import create_app
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import DeploymentRow
from tests.app.conftest import Api, upload_text
from tests.app.deployments.conftest import register_tuned
from tests.app.inference_fake import FakeInference, TransactionWatch, engine_of
from tests.support.data import sentiment_rows


@dataclass
class Guarded:
    client: TestClient
    settings: Settings
    fake: FakeInference
    watch: TransactionWatch
    store: ArtifactStore
    app: Any


@pytest.fixture
def guarded(migrated_database_url: str, tmp_path: Path, tiny_models: Path) -> Iterator[Guarded]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_database_url,
        models_dir=tiny_models,
        usage_flush_seconds=3600,  # the flusher's own short transaction is not a request's
    )
    app = create_app(settings, reconciler=False)
    watch = TransactionWatch(engine_of(app))
    fake = FakeInference(watch)
    app.state.inference = fake
    app.state.enqueue = lambda job_id: watch.check("enqueue")
    app.state.enqueue_evaluation = lambda evaluation_id: watch.check("enqueue_evaluation")
    store = ArtifactStore(settings.storage_url, settings.cache_dir)
    try:
        with TestClient(app) as client:
            yield Guarded(client, settings, fake, watch, store, app)
    finally:
        watch.detach()


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return (
        response.json()
        if response.headers["content-type"].startswith("application/json")
        else response
    )


def deploy(guarded: Guarded, model: str) -> str:
    dep = ok(guarded.client.post("/v1/deployments", json={"model": model}))
    # the load ran as a background task of that request
    assert ok(guarded.client.get(f"/v1/deployments/{dep['id']}"))["status"] == "ready"
    return str(dep["id"])


def events(guarded: Guarded, path: str, body: dict[str, Any]) -> list[str]:
    with guarded.client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        return [line for line in response.iter_lines() if line]


def test_no_route_waits_on_another_process_inside_a_transaction(guarded: Guarded) -> None:
    client = guarded.client
    assert guarded.settings.models_dir is not None
    classifier = register_tuned(
        guarded.app.state.sessionmaker, guarded.store, guarded.settings.models_dir
    )
    classifier_dep = deploy(guarded, classifier)
    llama_dep = deploy(guarded, "tiny-llama")

    ok(client.post(f"/v1/deployments/{classifier_dep}/predict", json={"inputs": ["a", "b"]}))
    path = f"/v1/deployments/{llama_dep}/predict"
    ok(client.post(path, json={"inputs": ["hi"]}))
    assert events(guarded, path, {"inputs": ["hi"], "stream": True})[-1] == "data: [DONE]"
    ok(client.post("/v1/predict", json={"model": classifier, "inputs": ["x"]}))
    ok(client.post("/v1/predict", json={"model": "tiny-llama", "inputs": ["x"], "stream": True}))

    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    ok(client.post("/v1/chat/completions", json=chat))
    assert events(guarded, "/v1/chat/completions", {**chat, "stream": True})[-1] == "data: [DONE]"
    completion = {"model": "tiny-llama", "prompt": "hi"}
    ok(client.post("/v1/completions", json=completion))
    stream = events(guarded, "/v1/completions", {**completion, "stream": True})
    assert stream[-1] == "data: [DONE]"

    # a deployment that failed while the server was down loads again on its next predict
    with guarded.app.state.sessionmaker() as session:
        session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == classifier_dep)
            .values(status="failed", error={"code": "inference_unavailable", "message": "x"})
        )
        session.commit()
    guarded.app.state.serving.lookup.forget_deployment(classifier_dep)
    ok(client.post(f"/v1/deployments/{classifier_dep}/predict", json={"inputs": ["a"]}))

    # the merged export asks the inference server, then packs what the store holds
    ok(client.get(f"/v1/models/{classifier}/content", params={"format": "merged"}))

    rows = "".join(json.dumps(r) + "\n" for r in sentiment_rows(12))
    file_id = upload_text(Api(client, guarded.settings), "eval.jsonl", rows)["id"]
    ok(client.post("/v1/evaluations", json={"model": classifier, "file": file_id}))

    ok(client.delete(f"/v1/deployments/{classifier_dep}"))
    ok(client.delete(f"/v1/deployments/{llama_dep}"))
    ok(client.delete(f"/v1/models/{classifier}"))

    assert guarded.watch.violations == []
    called = set(guarded.fake.calls)
    assert {"load", "predict", "stream_predict", "export_merged", "unload"} <= called
    assert guarded.fake.calls.count("load") == 3  # two deployments, one reload
    assert guarded.fake.calls.count("unload") >= 2


def test_the_guard_sees_a_transaction_held_across_the_call(guarded: Guarded) -> None:
    """The check above can fail: a session that read and did not commit is seen."""
    spec = {"key": "tiny-bert", "task": "classification"}
    with guarded.app.state.sessionmaker() as session:
        session.execute(text("SELECT 1"))
        with pytest.raises(AssertionError, match="1 database transaction"):
            asyncio.run(guarded.fake.predict(spec, ["x"], {}))
        session.commit()
    assert asyncio.run(guarded.fake.predict(spec, ["x"], {}))["predictions"][0]["label"] == "pos"

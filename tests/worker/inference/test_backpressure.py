"""Backpressure: beyond the queue limit a request is refused at once with 503, Retry-After and
code `overloaded`, and what was accepted still completes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from app.storage import ArtifactStore
from tests.worker.inference.artifacts import cls_spec, lm_spec
from worker.inference.errors import Overloaded
from worker.inference.loading import ModelSpec
from worker.inference.server import create_app
from worker.inference.service import InferenceService

GREEDY = {"temperature": 0, "max_new_tokens": 4}


@contextmanager
def engine_held(service: InferenceService, spec: ModelSpec) -> Iterator[None]:
    """Keep the base's engine thread busy until the block ends: whatever arrives meanwhile
    queues, as it would behind a long forward."""
    gate, inside = threading.Event(), threading.Event()

    def wait() -> None:
        inside.set()
        gate.wait(60)

    assert service.engine_of(service.load(spec)).call(wait)
    assert inside.wait(30)
    try:
        yield
    finally:
        gate.set()


@contextmanager
def server(tmp_path: Path, service: InferenceService) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path), store=service.store, service=service)
    with TestClient(app) as client:
        yield client


def wait_until(check: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(300):
        if check():
            return
        done.wait(0.1)
    raise AssertionError("condition not reached in 30 s")


@pytest.mark.parametrize("task", ["causal-lm", "classification"])
def test_a_full_queue_answers_503_overloaded_at_once(
    tmp_path: Path, store: ArtifactStore, llama_dir: Path, bert_dir: Path, task: str
) -> None:
    service = InferenceService(store, max_running=1, max_batch_size=1, max_queue=2)
    if task == "causal-lm":
        spec, body = lm_spec(llama_dir), {"parameters": GREEDY}
    else:
        spec, body = cls_spec(bert_dir), {}
    request = {"model": spec, "inputs": ["hello"], **body}
    model = ModelSpec(**spec)
    engine = service.engine_of(service.load(model))
    with server(tmp_path, service) as client, ThreadPoolExecutor(2) as pool:
        with engine_held(service, model):
            accepted = [
                pool.submit(client.post, "/internal/predict", json=request) for _ in range(2)
            ]
            wait_until(lambda: engine.stats().waiting == 2)
            # the engine is still held: the answer cannot have waited for it
            refused = client.post("/internal/predict", json=request)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            error = refused.json()["error"]
            assert error["code"] == "overloaded" and error["type"] == "server_error"
            assert error["param"] is None and "retry" in error["message"]
            assert not any(f.done() for f in accepted)
        assert [f.result(timeout=60).status_code for f in accepted] == [200, 200]
        # the queue drained: room again
        assert client.post("/internal/predict", json=request).status_code == 200
    assert engine.stats().waiting == 0


def test_a_stream_that_cannot_be_admitted_is_an_ordinary_error_response(
    tmp_path: Path, store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_running=1, max_queue=1)
    spec = ModelSpec(**lm_spec(llama_dir))
    events: list[Any] = []
    with server(tmp_path, service) as client, engine_held(service, spec):
        service.open_stream(spec, "hello", GREEDY, events.append)  # takes the one place
        body = {"model": lm_spec(llama_dir), "inputs": ["hi"], "parameters": GREEDY}
        response = client.post("/internal/predict", json={**body, "stream": True})
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
        with pytest.raises(Overloaded):
            service.predict(spec, ["hi"], GREEDY)
    wait_until(lambda: None in events)
    assert isinstance(events[-2], dict) and events[-2]["completion_tokens"] == 4


def test_models_report_the_limits_and_the_queue(
    tmp_path: Path, store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_running=3, max_queue=7)
    spec = ModelSpec(**lm_spec(llama_dir))
    with server(tmp_path, service) as client:
        with engine_held(service, spec):
            future = ThreadPoolExecutor(1).submit(service.predict, spec, ["hi"], GREEDY)
            wait_until(lambda: service.engine_of(service.load(spec)).stats().waiting == 1)
            listing = client.get("/internal/models").json()
        future.result(timeout=60)
    assert listing["max_running"] == 3 and listing["max_queue"] == 7
    (base,) = listing["bases"]
    assert base["waiting"] == 1 and base["running"] == 0

"""Past what a model can serve, the answer is a 503 with Retry-After at once, never a wait:
from the API's own per-model limit, and passed through from the inference server's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from app.inference_client import refusal
from app.main import create_app
from app.settings import Settings
from tests.app.inference_fake import FakeInference, TransactionWatch, engine_of
from tests.app.openai_compat.sdk import serve_in_thread

LIMIT = 2
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}


def make_api(database_url: str, tmp_path: Path, tiny_models: Path, **settings: Any) -> FastAPI:
    config = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        models_dir=tiny_models,
        usage_flush_seconds=3600,
        **settings,
    )
    return create_app(config, reconciler=False)


@pytest.fixture
def limited(migrated_database_url: str, tmp_path: Path, tiny_models: Path) -> Iterator[TestClient]:
    app = make_api(migrated_database_url, tmp_path, tiny_models, serving_max_concurrency=LIMIT)
    app.state.inference = FakeInference(TransactionWatch(engine_of(app)))
    with TestClient(app) as client:
        yield client


def deploy(client: TestClient, model: str) -> str:
    response = client.post("/v1/deployments", json={"model": model})
    assert response.status_code == 200, response.text
    dep_id = str(response.json()["id"])
    assert client.get(f"/v1/deployments/{dep_id}").json()["status"] == "ready"
    return dep_id


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_overloaded(response: Any, retry_after: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == retry_after
    assert response.json()["error"]["code"] == "overloaded"


def test_requests_past_the_limit_are_refused_at_once_and_slots_come_back(
    limited: TestClient,
) -> None:
    app: Any = limited.app
    fake: FakeInference = app.state.inference
    limits = app.state.serving.limits
    dep_id = deploy(limited, "tiny-llama")
    path = f"/v1/deployments/{dep_id}/predict"
    assert limited.portal is not None
    fake.gate = limited.portal.call(_new_event)
    with ThreadPoolExecutor(LIMIT) as pool:
        held = [pool.submit(limited.post, path, json={"inputs": ["hi"]}) for _ in range(LIMIT)]
        wait_until(lambda: fake.waiting == LIMIT)
        # every route that reaches tiny-llama shares its slots, streams included; the
        # answers come while the admitted requests are still waiting
        message = limited.post(path, json={"inputs": ["hi"]})
        assert_overloaded(message, "1")
        assert "TUNERY_SERVING_MAX_CONCURRENCY=2" in message.json()["error"]["message"]
        assert_overloaded(limited.post(path, json={"inputs": ["hi"], "stream": True}), "1")
        assert_overloaded(limited.post("/v1/chat/completions", json=CHAT), "1")
        body = {"model": "tiny-llama", "inputs": ["x"]}
        assert_overloaded(limited.post("/v1/predict", json=body), "1")
        assert fake.waiting == LIMIT
        limited.portal.call(fake.gate.set)
        assert [f.result().status_code for f in held] == [200] * LIMIT
    fake.gate = None
    assert limits.in_flight("tiny-llama") == 0
    with limited.stream("POST", path, json={"inputs": ["hi"], "stream": True}) as response:
        assert response.status_code == 200
        assert [line for line in response.iter_lines() if line][-1] == "data: [DONE]"
    assert limits.in_flight("tiny-llama") == 0  # the stream gave its slot back
    assert limited.post(path, json={"inputs": ["hi"]}).status_code == 200
    # refused requests were not served, so they are not counted
    assert limited.get(f"/v1/deployments/{dep_id}").json()["requests_served"] == LIMIT + 2


@pytest.mark.parametrize("path", ["deployment", "/v1/chat/completions"])
def test_a_client_gone_mid_stream_frees_its_slot_and_stops_the_generation(
    migrated_database_url: str, tmp_path: Path, tiny_models: Path, path: str
) -> None:
    app = make_api(migrated_database_url, tmp_path, tiny_models)
    fake = FakeInference(TransactionWatch(engine_of(app)))
    app.state.inference = fake
    limits = app.state.serving.limits
    with TestClient(app) as client:
        dep_id = deploy(client, "tiny-llama")
        fake.hold_streams = True
        if path == "deployment":
            path, body = f"/v1/deployments/{dep_id}/predict", {"inputs": ["hi"], "stream": True}
        else:
            body = {**CHAT, "stream": True}
        with serve_in_thread(app) as url:  # a real socket, so the client can hang up
            with httpx.stream("POST", url + path, json=body, timeout=30) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert "hello" in next(line for line in lines if "hello" in line)
                assert limits.in_flight("tiny-llama") == 1
            wait_until(lambda: limits.in_flight("tiny-llama") == 0 and fake.streams_closed == 1)
        if "deployments" in path:
            assert client.get(f"/v1/deployments/{dep_id}").json()["requests_served"] == 1


async def _new_event() -> Any:
    import asyncio

    return asyncio.Event()


def overloaded_inference(status: int, retry_after: str | None) -> FastAPI:
    """An inference server whose queue is full: it loads, and refuses every predict."""
    server = FastAPI()

    @server.post("/internal/load")
    async def load(request: Request) -> dict[str, Any]:
        spec = (await request.json())["model"]
        return {"key": spec["key"], "load_seconds": 0.1, "memory_bytes": 1, "base": None}

    @server.post("/internal/predict")
    async def predict() -> JSONResponse:
        error = {"message": "queue full (32 waiting)", "type": "server_error", "param": None}
        headers = {"Retry-After": retry_after} if retry_after else {}
        return JSONResponse(
            {"error": {**error, "code": "overloaded"}}, status_code=status, headers=headers
        )

    return server


@pytest.mark.parametrize(("status", "retry_after"), [(503, "3"), (429, "2")])
def test_the_inference_servers_overload_answer_reaches_the_client(
    migrated_database_url: str, tmp_path: Path, tiny_models: Path, status: int, retry_after: str
) -> None:
    with serve_in_thread(overloaded_inference(status, retry_after)) as url:
        app = make_api(migrated_database_url, tmp_path, tiny_models, inference_url=url)
        with TestClient(app) as client:
            dep_id = deploy(client, "tiny-llama")
            path = f"/v1/deployments/{dep_id}/predict"
            for response in (
                client.post(path, json={"inputs": ["hi"]}),
                client.post(path, json={"inputs": ["hi"], "stream": True}),
                client.post("/v1/chat/completions", json=CHAT),
                client.post("/v1/chat/completions", json={**CHAT, "stream": True}),
            ):
                assert response.status_code == status, response.text
                assert response.headers["Retry-After"] == retry_after
                error = response.json()["error"]
                assert error["code"] == "overloaded" and "queue full" in error["message"]
            assert app.state.serving.limits.in_flight("tiny-llama") == 0


def test_an_overload_answer_without_retry_after_still_gets_one() -> None:
    body = {"error": {"message": "busy", "type": "server_error", "param": None}}
    raw = json.dumps({"error": {**body["error"], "code": "overloaded"}}).encode()
    error = refusal(503, {}, raw)
    assert (error.status, error.code, error.headers) == (503, "overloaded", {"Retry-After": "1"})

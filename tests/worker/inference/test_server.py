"""The HTTP surface: input limits, error shape, loading, pinning and eviction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from app.storage import ArtifactStore
from tests.worker.inference.artifacts import LM_ADAPTER, LM_FULL, cls_spec, lm_spec
from worker.inference.server import create_app
from worker.inference.service import InferenceService


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("inputs", "parameters", "param", "says"),
    [
        ([], {}, "inputs", "at least 1"),
        (["x"] * 65, {}, "inputs", "at most 64"),
        ([""], {}, "inputs.0", "at least 1 character"),
        (["x" * 20_001], {}, "inputs.0", "at most 20000"),
        ([{"messages": []}], {}, "inputs.0.messages", "at least 1"),
        ([{"messages": [{"role": "robot", "content": "hi"}]}], {}, "inputs.0.messages.0.role", ""),
        (["x"], {"max_new_tokens": 0}, "parameters.max_new_tokens", "greater than or equal to 1"),
        (["x"], {"max_new_tokens": 2049}, "parameters.max_new_tokens", "2048"),
        (["x"], {"temperature": 2.5}, "parameters.temperature", "2"),
        (["x"], {"top_p": 0}, "parameters.top_p", "greater than 0"),
        (["x"], {"top_k": 0}, "parameters.top_k", "greater than or equal to 1"),
        (["x"], {"stop": ["a"] * 5}, "parameters.stop", "1 to 4 strings"),
        (["x"], {"stop": 3}, "parameters.stop", "1 to 4 strings"),
        (["x"], {"max_tokens": 5}, "parameters.max_tokens", "not permitted"),
    ],
)
def test_bad_input_is_a_422_that_names_the_field(
    client: TestClient,
    llama_dir: Path,
    inputs: list[Any],
    parameters: dict[str, Any],
    param: str,
    says: str,
) -> None:
    body = {"model": lm_spec(llama_dir), "inputs": inputs, "parameters": parameters}
    response = client.post("/internal/predict", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ") and says in error["message"]
    assert error["type"] == "invalid_request_error"
    assert client.get("/internal/models").json()["models"] == []  # refused before loading


def test_task_specific_parameters_and_inputs(client: TestClient, bert_dir: Path) -> None:
    body = {"model": cls_spec(bert_dir), "inputs": ["x"], "parameters": {"temperature": 0}}
    error = client.post("/internal/predict", json=body).json()["error"]
    assert error["code"] == "unsupported_parameter" and "top_k" in error["message"]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    body = {"model": cls_spec(bert_dir), "inputs": [chat]}
    response = client.post("/internal/predict", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unsupported_input"


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/internal/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_bad_model_spec_is_a_422(client: TestClient, llama_dir: Path) -> None:
    spec = {**lm_spec(llama_dir), "task": "translation"}
    response = client.post("/internal/load", json={"model": spec})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "model.task"


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    response = client.get("/internal/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_predict_loads_just_in_time_and_counts(client: TestClient, llama_dir: Path) -> None:
    body = {"model": lm_spec(llama_dir), "inputs": ["hi"], "parameters": {"max_new_tokens": 2}}
    assert client.post("/internal/predict", json=body).status_code == 200
    assert client.post("/internal/predict", json=body).status_code == 200
    (entry,) = client.get("/internal/models").json()["models"]
    assert entry["key"] == "ft:lm" and entry["requests_served"] == 2 and not entry["pinned"]


def test_unload(client: TestClient, llama_dir: Path) -> None:
    client.post("/internal/load", json={"model": lm_spec(llama_dir), "pin": True})
    response = client.post("/internal/unload", json={"key": "ft:lm"})
    assert response.json() == {"key": "ft:lm", "unloaded": True}
    assert client.get("/internal/models").json()["models"] == []
    assert client.post("/internal/unload", json={"key": "ft:lm"}).json()["unloaded"] is False


def test_lru_eviction_spares_pinned_models(
    tmp_path: Path, store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_models=2)
    app = create_app(Settings(data_dir=tmp_path), store=store, service=service)
    specs = {
        "pinned": lm_spec(llama_dir, LM_FULL, key="pinned"),
        "old": lm_spec(llama_dir, None, key="old"),
        "new": lm_spec(llama_dir, LM_ADAPTER, key="new"),
    }
    with TestClient(app) as client:
        client.post("/internal/load", json={"model": specs["pinned"], "pin": True})
        client.post("/internal/load", json={"model": specs["old"]})
        client.post("/internal/load", json={"model": specs["new"]})
        listing = client.get("/internal/models").json()
    assert {m["key"] for m in listing["models"]} == {"pinned", "new"}
    assert listing["max_models"] == 2
    # each base once, plus what adapters add on top of theirs
    adapters = [m for m in listing["models"] if m["base_memory_bytes"] is not None]
    assert [m["key"] for m in adapters] == ["new"]
    assert listing["memory_bytes"] == sum(b["memory_bytes"] for b in listing["bases"]) + sum(
        m["memory_bytes"] for m in adapters
    )
    # "old" (the bare base) went, but its weights stay: the adapter "new" runs on them
    assert len(listing["bases"]) == 2


def test_a_new_spec_under_a_known_key_reloads(client: TestClient, llama_dir: Path) -> None:
    first = lm_spec(llama_dir, LM_FULL, key="moving")
    second = lm_spec(llama_dir, LM_ADAPTER, key="moving")
    body = {"inputs": ["hello"], "parameters": {"temperature": 0, "max_new_tokens": 8}}
    client.post("/internal/load", json={"model": first, "pin": True})
    a = client.post("/internal/predict", json={"model": first, **body}).json()
    b = client.post("/internal/predict", json={"model": second, **body}).json()
    assert a != b
    (entry,) = client.get("/internal/models").json()["models"]
    assert entry["pinned"] is True

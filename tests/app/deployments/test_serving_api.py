"""Deployments and on-demand predict through the API, against a real inference process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.app.deployments.conftest import Serving, deploy

TEXTS = ["the movie was great and i loved it", "this is awful sad and bad"]
GREEDY = {"temperature": 0, "max_new_tokens": 10}


def sse(serving: Serving, path: str, body: dict[str, Any]) -> list[Any]:
    with serving.client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_a_deployed_classifier_reports_itself_and_predicts(serving: Serving) -> None:
    name = serving.tuned("classification", labels=["neg", "neutral", "pos"])
    dep = deploy(serving, name)
    assert dep["status"] == "ready", dep
    assert dep["load_seconds"] > 0
    assert 0 < dep["memory_bytes"] < dep["base_memory_bytes"]  # the adapter, beside its base
    path = f"/v1/deployments/{dep['id']}/predict"
    response = serving.client.post(path, json={"inputs": TEXTS, "parameters": {"top_k": 2}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "prediction" and body["deployment"] == dep["id"]
    for prediction in body["predictions"]:
        assert len(prediction["scores"]) == 2
        assert prediction["label"] in {"neg", "neutral", "pos"}
    serving.client.post(path, json={"inputs": TEXTS[:1]})
    assert serving.client.get(f"/v1/deployments/{dep['id']}").json()["requests_served"] == 2
    (served,) = [m for m in serving.inference.models()["models"] if m["key"] == name]
    assert served["pinned"] is True and served["requests_served"] == 2


def test_a_deployed_causal_lm_predicts_and_streams(serving: Serving) -> None:
    name = serving.tuned("causal-lm")
    dep = deploy(serving, name)
    assert dep["status"] == "ready", dep
    path = f"/v1/deployments/{dep['id']}/predict"
    body = {"inputs": ["hello world"], "parameters": GREEDY}
    response = serving.client.post(path, json=body)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    *deltas, final = sse(serving, path, body)
    assert "".join(d["text"] for d in deltas) == prediction["text"]
    assert final == {k: v for k, v in prediction.items() if k != "text"}
    assert serving.client.get(f"/v1/deployments/{dep['id']}").json()["requests_served"] == 2


def test_any_model_predicts_on_demand_without_a_deployment(serving: Serving) -> None:
    name = serving.tuned("causal-lm")
    for model in (name, "tiny-llama"):
        response = serving.client.post(
            "/v1/predict", json={"model": model, "inputs": ["hi"], "parameters": GREEDY}
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model and response.json()["deployment"] is None
    events = sse(serving, "/v1/predict", {"model": name, "inputs": ["hi"], "parameters": GREEDY})
    assert "finish_reason" in events[-1]
    loaded = {m["key"]: m for m in serving.inference.models()["models"]}
    assert loaded[name]["pinned"] is False  # on demand: evictable, unlike a deployment
    # the adapter and the bare base run on one copy of tiny-llama
    (base,) = [b for b in serving.inference.models()["bases"] if name in b["models"]]
    assert "tiny-llama" in base["models"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "nope", "inputs": ["x"]}, "model", "No model"),
        (
            {"model": "tiny-llama", "inputs": ["x"], "parameters": {"max_new_tokens": 5000}},
            "parameters.max_new_tokens",
            "2048",
        ),
        ({"model": "tiny-llama", "inputs": ["x"] * 65}, "inputs", "64"),
        ({"model": "tiny-llama", "inputs": [""]}, "inputs.0", "at least 1 character"),
        (
            {"model": "tiny-bert", "inputs": ["x"], "parameters": {"seed": 1}},
            "parameters.seed",
            "top_k",
        ),
        ({"model": "tiny-bert", "inputs": ["x"], "stream": True}, "stream", "causal-lm"),
        ({"model": "tiny-llama", "inputs": ["x", "y"], "stream": True}, "inputs", "exactly 1"),
    ],
)
def test_bad_input_is_a_4xx_that_says_what_to_change(
    serving: Serving, body: dict[str, Any], param: str, says: str
) -> None:
    response = serving.client.post("/v1/predict", json=body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_inference_server_down_is_a_503_and_recovers_when_back(serving: Serving) -> None:
    name = serving.tuned("classification")
    dep = deploy(serving, name)
    path = f"/v1/deployments/{dep['id']}/predict"
    assert serving.client.post(path, json={"inputs": TEXTS}).status_code == 200

    serving.inference.kill()
    response = serving.client.post(path, json={"inputs": TEXTS})
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "inference_unavailable"
    assert (
        serving.client.post("/v1/predict", json={"model": name, "inputs": ["x"]}).status_code == 503
    )

    serving.inference.start()
    response = serving.client.post(path, json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    # the new process loaded it just in time, and pinned again: it is still deployed
    (served,) = [m for m in serving.inference.models()["models"] if m["key"] == name]
    assert served["pinned"] is True


def test_a_deployment_made_while_the_server_was_down_recovers(serving: Serving) -> None:
    serving.inference.kill()
    dep = deploy(serving, "tiny-bert")
    assert dep["status"] == "failed" and dep["error"]["code"] == "inference_unavailable"
    path = f"/v1/deployments/{dep['id']}/predict"
    assert serving.client.post(path, json={"inputs": ["x"]}).status_code == 503
    serving.inference.start()
    response = serving.client.post(path, json={"inputs": ["x"]})
    assert response.status_code == 200, response.text
    after = serving.client.get(f"/v1/deployments/{dep['id']}").json()
    assert after["status"] == "ready" and after["error"] is None and after["load_seconds"] > 0

"""Many clients on one deployment at once, against a real inference server: every request
is answered and counted exactly once (behaviour; bench/serving.py measures the speed)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.tables import DeploymentRow
from tests.app.conftest import app_of
from tests.app.deployments.conftest import Serving, deploy

TEXTS = ["the movie was great and i loved it", "this is awful sad and bad"]
CLIENTS = 32


def concurrently(serving: Serving, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda body: serving.client.post(path, json=body), bodies))


def stored(serving: Serving, dep_id: str) -> DeploymentRow:
    """The row as the database holds it, after this process wrote what it counted."""
    app = app_of(serving.client)
    assert serving.client.portal is not None
    serving.client.portal.call(app.state.serving.usage.flush)
    with app.state.sessionmaker() as session:
        row = session.get(DeploymentRow, dep_id)
        assert row is not None
        return row


def test_32_concurrent_predicts_are_all_answered_and_all_counted(serving: Serving) -> None:
    dep = deploy(serving, serving.tuned("classification"))
    path = f"/v1/deployments/{dep['id']}/predict"
    bodies = [{"inputs": [TEXTS[i % 2]]} for i in range(CLIENTS * 3)]
    responses = concurrently(serving, path, bodies)
    assert [r.status_code for r in responses] == [200] * len(bodies), [
        r.text for r in responses if r.status_code != 200
    ][:3]
    labels = {r.json()["predictions"][0]["label"] for r in responses}
    assert labels <= {"neg", "pos"}
    # exact at once in this process, before any flush...
    public = serving.client.get(f"/v1/deployments/{dep['id']}").json()
    assert public["requests_served"] == len(bodies)
    assert public["prompt_tokens"] == public["completion_tokens"] == 0  # a classifier
    # ...and in the database once flushed; a read after the flush still says the same
    assert stored(serving, dep["id"]).requests_served == len(bodies)
    listed = serving.client.get("/v1/deployments").json()["data"]
    assert [d["requests_served"] for d in listed if d["id"] == dep["id"]] == [len(bodies)]


def test_a_causal_deployment_counts_the_tokens_it_served(serving: Serving) -> None:
    dep = deploy(serving, serving.tuned("causal-lm"))
    path = f"/v1/deployments/{dep['id']}/predict"
    parameters = {"temperature": 0, "max_new_tokens": 4}
    bodies = [{"inputs": [f"hello {i}"], "parameters": parameters} for i in range(8)]
    responses = concurrently(serving, path, bodies)
    assert [r.status_code for r in responses] == [200] * len(bodies)
    predictions = [r.json()["predictions"][0] for r in responses]
    with serving.client.stream("POST", path, json={**bodies[0], "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    predictions.append(predictions[0])  # the stream generated the same as the first
    row = stored(serving, dep["id"])
    assert row.requests_served == len(bodies) + 1
    assert row.prompt_tokens == sum(p["prompt_tokens"] for p in predictions) > 0
    assert row.completion_tokens == sum(p["completion_tokens"] for p in predictions) > 0


def test_the_project_counts_everything_it_was_served(serving: Serving) -> None:
    """GET /v1/usage: deployment predicts and streams, /v1/predict, chat and completions
    (streamed and not) all count for the calling project, exactly, before and after a
    flush."""
    model = serving.tuned("causal-lm")
    dep = deploy(serving, model)
    before = serving.client.get("/v1/usage").json()
    parameters = {"temperature": 0, "max_new_tokens": 3}
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    completion = {"model": model, "prompt": "hello", "max_tokens": 3}
    answers: list[dict[str, Any]] = []
    for path, body in [
        (f"/v1/deployments/{dep['id']}/predict", {"inputs": ["a", "b"], "parameters": parameters}),
        ("/v1/predict", {"model": model, "inputs": ["c"], "parameters": parameters}),
        ("/v1/chat/completions", chat),
        ("/v1/completions", completion),
    ]:
        response = serving.client.post(path, json=body)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    for path, body in [("/v1/chat/completions", chat), ("/v1/completions", completion)]:
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with serving.client.stream("POST", path, json=streamed) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        answers.append(json.loads(lines[-2].removeprefix("data: ")))
    prompt = completion_tokens = 0
    for answer in answers:
        if "predictions" in answer:
            prompt += sum(p["prompt_tokens"] for p in answer["predictions"])
            completion_tokens += sum(p["completion_tokens"] for p in answer["predictions"])
        else:
            prompt += answer["usage"]["prompt_tokens"]
            completion_tokens += answer["usage"]["completion_tokens"]
    requests = len(answers)  # one request each, whatever its number of inputs

    def grown(usage: dict[str, Any]) -> tuple[int, int, int]:
        return (
            usage["requests_served"] - before["requests_served"],
            usage["prompt_tokens"] - before["prompt_tokens"],
            usage["completion_tokens"] - before["completion_tokens"],
        )

    now = serving.client.get("/v1/usage").json()
    assert grown(now) == (requests, prompt, completion_tokens) and prompt > 0
    assert now["total_tokens"] == now["prompt_tokens"] + now["completion_tokens"]
    app = app_of(serving.client)
    assert serving.client.portal is not None
    serving.client.portal.call(app.state.serving.project_usage.flush)
    assert grown(serving.client.get("/v1/usage").json()) == (requests, prompt, completion_tokens)
    # the deployment's own counts hold only what went through it
    assert serving.client.get(f"/v1/deployments/{dep['id']}").json()["requests_served"] == 1

"""Streamed generation over server-sent events: the deltas add up to the unstreamed text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.worker.inference.artifacts import LM_ADAPTER, cls_spec, lm_spec
from worker.inference.streaming import safe_prefix

GREEDY = {"temperature": 0, "max_new_tokens": 16}


def stream_events(client: TestClient, body: dict[str, Any]) -> list[Any]:
    with client.stream("POST", "/internal/predict", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    # every event is one data line followed by a blank line
    data = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in data)
    assert lines.count("") == len(data)
    return [line.removeprefix("data: ") for line in data]


def check_stream(client: TestClient, body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The deltas and the final event of a stream, checked against the same request unstreamed."""
    events = stream_events(client, body)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    *deltas, final = parsed
    assert all(set(d) == {"text"} and d["text"] for d in deltas)
    unstreamed = client.post("/internal/predict", json=body)
    assert unstreamed.status_code == 200, unstreamed.text
    (expected,) = unstreamed.json()["predictions"]
    assert "".join(d["text"] for d in deltas) == expected["text"]
    assert final == {k: v for k, v in expected.items() if k != "text"}
    return [d["text"] for d in deltas], final


def test_stream_sends_the_text_token_by_token(client: TestClient, llama_dir: Path) -> None:
    body = {"model": lm_spec(llama_dir), "inputs": ["hello world"], "parameters": GREEDY}
    deltas, final = check_stream(client, body)
    assert len(deltas) > 1
    assert final["completion_tokens"] >= len(deltas)


def test_stream_of_an_adapter_with_a_stop_string(client: TestClient, llama_dir: Path) -> None:
    spec = lm_spec(llama_dir, LM_ADAPTER, key="ft:lora")
    plain = client.post(
        "/internal/predict", json={"model": spec, "inputs": ["hello"], "parameters": GREEDY}
    ).json()["predictions"][0]["text"]
    assert len(plain) > 4
    stop = plain[3:5]
    body = {"model": spec, "inputs": ["hello"], "parameters": {**GREEDY, "stop": [stop]}}
    deltas, final = check_stream(client, body)
    assert "".join(deltas) == plain[: plain.find(stop)]
    assert final["finish_reason"] == "stop"


def test_stream_of_seeded_sampling_and_chat(client: TestClient, llama_dir: Path) -> None:
    sampled = {"temperature": 1.2, "top_p": 0.9, "seed": 11, "max_new_tokens": 12}
    body = {"model": lm_spec(llama_dir), "inputs": ["hello"], "parameters": sampled}
    check_stream(client, body)
    chat = {"messages": [{"role": "user", "content": "what is the capital of france?"}]}
    check_stream(client, {"model": lm_spec(llama_dir), "inputs": [chat], "parameters": GREEDY})


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"inputs": ["a", "b"]}, "inputs"),
        ({"parameters": {"max_new_tokens": 5000}}, "parameters.max_new_tokens"),
        ({"parameters": {"top_k": 2}}, "parameters.top_k"),
    ],
)
def test_a_refused_stream_is_an_ordinary_json_error(
    client: TestClient, llama_dir: Path, change: dict[str, Any], param: str
) -> None:
    body = {"model": lm_spec(llama_dir), "inputs": ["hi"], "stream": True, **change}
    response = client.post("/internal/predict", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == param


def test_classification_cannot_stream(client: TestClient, bert_dir: Path) -> None:
    body = {"model": cls_spec(bert_dir), "inputs": ["hi"], "stream": True}
    response = client.post("/internal/predict", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "stream"


@pytest.mark.parametrize(
    ("text", "stops", "safe", "stopped"),
    [
        ("hello wor", ["world"], "hello ", False),  # "wor" may become the stop string
        ("hello world!", ["world"], "hello ", True),
        ("hello w", ["xyz"], "hello w", False),
        ("abc\ufffd", [], "abc", False),  # half a character waits for the rest
        ("a.b.", [".\n"], "a.b", False),
    ],
)
def test_safe_prefix_holds_back_what_may_change(
    text: str, stops: list[str], safe: str, stopped: bool
) -> None:
    assert safe_prefix(text, stops) == (safe, stopped)

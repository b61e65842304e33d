"""The OpenAPI document tells the truth (app/openapi.py): the constraints the code enforces,
and links from each create (and list) to the reads and actions on what it returned."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app import openapi
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import Api


def document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp)), reconciler=False).openapi()


DOC = document()


def operation_ids() -> dict[str, str]:
    return {
        op["operationId"]: f"{method.upper()} {path}"
        for path, methods in DOC["paths"].items()
        for method, op in methods.items()
    }


def validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one component, resolving the document's other components."""
    schema = {**DOC["components"]["schemas"][name], "components": DOC["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_inference_servers_limits_are_the_ones_the_schema_states() -> None:
    from worker.inference import schemas

    assert openapi.MAX_INPUTS == schemas.MAX_INPUTS
    assert openapi.MAX_INPUT_CHARS == schemas.MAX_INPUT_CHARS
    assert openapi.MAX_MESSAGES == schemas.MAX_MESSAGES
    assert openapi.MAX_STOP_STRINGS == schemas.MAX_STOP_STRINGS
    assert openapi.MAX_STOP_CHARS == schemas.MAX_STOP_CHARS
    fields = schemas.Parameters.model_fields
    bounds = {m.__class__.__name__: m for m in fields["max_new_tokens"].metadata}
    assert bounds["Le"].le == openapi.MAX_NEW_TOKENS
    seed_bounds = {m.__class__.__name__: m for m in fields["seed"].metadata}
    assert seed_bounds["Le"].le == openapi.MAX_SEED
    assert openapi.MAX_N == schemas.MAX_N
    assert openapi.MAX_TOP_LOGPROBS == schemas.MAX_TOP_LOGPROBS
    assert openapi.MAX_TOOLS == schemas.MAX_TOOLS


# every create, and the reads and actions its links lead to
EXPECTED_LINKS = {
    "POST /v1/fine_tuning/jobs": {
        "GET /v1/fine_tuning/jobs/{job_id}",
        "POST /v1/fine_tuning/jobs/{job_id}/cancel",
        "POST /v1/fine_tuning/jobs/{job_id}/pause",
        "POST /v1/fine_tuning/jobs/{job_id}/resume",
        "GET /v1/fine_tuning/jobs/{job_id}/events",
        "GET /v1/fine_tuning/jobs/{job_id}/checkpoints",
        "GET /v1/fine_tuning/jobs/{job_id}/metrics",
    },
    "POST /v1/files": {
        "GET /v1/files/{file_id}",
        "GET /v1/files/{file_id}/content",
        "GET /v1/files/{file_id}/samples",
        "DELETE /v1/files/{file_id}",
        "POST /v1/fine_tuning/jobs",
        "POST /v1/evaluations",
    },
    "POST /v1/deployments": {
        "GET /v1/deployments/{dep_id}",
        "DELETE /v1/deployments/{dep_id}",
        "POST /v1/deployments/{dep_id}/predict",
    },
    "POST /v1/evaluations": {"GET /v1/evaluations/{evaluation_id}"},
    "GET /v1/models": {
        "GET /v1/models/{model_id}",
        "GET /v1/models/{model_id}/content",
        "DELETE /v1/models/{model_id}",
        "POST /v1/fine_tuning/jobs",
        "POST /v1/deployments",
        "POST /v1/predict",
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/evaluations",
    },
    "GET /v1/fine_tuning/jobs/{job_id}/checkpoints": {
        "GET /v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/content",
        "POST /v1/fine_tuning/jobs",
    },
}


def test_each_create_links_to_the_reads_and_actions_on_what_it_returned() -> None:
    ids = operation_ids()
    for source, targets in EXPECTED_LINKS.items():
        method, path = source.split(" ", 1)
        links = DOC["paths"][path][method.lower()]["responses"]["200"]["links"]
        assert {ids[link["operationId"]] for link in links.values()} == targets, source


def test_every_operation_on_an_id_is_reached_by_a_link() -> None:
    """Each path parameter of each operation is filled by some link, so a stateful client
    never has to guess an id; and every link names parameters its target has."""
    ids = operation_ids()
    filled: dict[str, set[str]] = {}
    for path, methods in DOC["paths"].items():
        for op in methods.values():
            for link in op["responses"].get("200", {}).get("links", {}).values():
                target = ids[link["operationId"]]
                method, target_path = target.split(" ", 1)
                declared = {
                    p["name"]
                    for p in DOC["paths"][target_path][method.lower()].get("parameters", [])
                }
                assert set(link.get("parameters", {})) <= declared, (path, link)
                filled.setdefault(target, set()).update(link.get("parameters", {}))
    for path, methods in DOC["paths"].items():
        for method, op in methods.items():
            needed = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            if needed:
                label = f"{method.upper()} {path}"
                assert needed <= filled.get(label, set()), label


@pytest.mark.parametrize(
    ("component", "body", "valid"),
    [
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            True,
        ),
        (
            "ChatCompletionRequest",
            {
                "model": "m",
                "messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}],
                "max_tokens": 2048,
                "temperature": 2,
                "top_p": 1,
                "stop": ["a", "b"],
                "n": 1,
                "user": "u",
                "logprobs": False,
                "tool_choice": "none",
            },
            True,
        ),
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": {}, "content": "x"}]},
            False,
        ),
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
            False,
        ),
        ("ChatCompletionRequest", {"model": "m", "messages": [{"role": "user"}]}, False),
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 17},
            False,
        ),
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2049},
            False,
        ),
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            False,
        ),
        (
            "ChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "surprise": 1},
            False,
        ),
        (
            "ChatCompletionRequest",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 5,
                "max_completion_tokens": 5,
            },
            False,
        ),
        (
            "ChatCompletionRequest",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
            False,
        ),
        ("CompletionRequest", {"model": "m", "prompt": "hello", "echo": False, "best_of": 1}, True),
        ("CompletionRequest", {"model": "m", "prompt": ["one"]}, True),
        ("CompletionRequest", {"model": "m", "prompt": ["one", "two"]}, False),
        ("CompletionRequest", {"model": "m", "prompt": [1, 2]}, False),
        ("CompletionRequest", {"model": "m", "prompt": "x", "suffix": "y"}, False),
        ("ModelPredictRequest", {"model": "m", "inputs": ["x"], "parameters": {"top_k": 2}}, True),
        ("ModelPredictRequest", {"model": "m", "inputs": [""]}, False),
        ("ModelPredictRequest", {"model": "m", "inputs": ["x"], "parameters": {"beam": 2}}, False),
        ("JobCreate", {"model": "m", "training_file": "f"}, True),
        (
            "JobCreate",
            {
                "model": "m",
                "training_file": "f",
                "training_type": {"type": "lora", "target_modules": "q"},
            },
            False,
        ),
        (
            "JobCreate",
            {"model": "m", "training_file": "f", "metadata": {str(i): "v" for i in range(17)}},
            False,
        ),
        (
            "JobCreate",
            {"model": "m", "training_file": "f", "hyperparameters": {}, "method": {}},
            False,
        ),
        (
            "JobCreate",
            {
                "model": "m",
                "training_file": "f",
                "hyperparameters": {"learning_rate": 0.1, "learning_rate_multiplier": 2},
            },
            False,
        ),
        ("Body_upload_file_v1_files_post", {"file": "x", "purpose": "assistants"}, False),
    ],
)
def test_the_schema_states_what_the_api_accepts(component: str, body: Any, valid: bool) -> None:
    assert validator(component).is_valid(body) is valid, body


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_schemas_verdicts_are_the_apis(api: Api) -> None:
    """The same bodies, sent: a schema-invalid one is refused with a 400 naming the field,
    and a schema-valid one gets past validation (to the 503 of the missing inference server)."""
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    sent = [
        ({**chat, "n": 17}, 400, "n"),
        ({**chat, "max_tokens": 5, "max_completion_tokens": 5}, 400, "max_tokens"),
        ({**chat, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({**chat, "top_logprobs": 2}, 400, "top_logprobs"),
        ({**chat, "tool_choice": "required"}, 400, "tool_choice"),
        ({**chat, "surprise": 1}, 400, "surprise"),
        ({**chat, "messages": [{"role": {}, "content": "x"}]}, 400, "messages.0.role"),
        ({**chat, "user": "u", "logprobs": False, "tool_choice": "none"}, 503, None),
        ({**chat, "n": 2, "logprobs": True, "top_logprobs": 3}, 503, None),
    ]
    for body, status, param in sent:
        assert validator("ChatCompletionRequest").is_valid(body) is (status != 400), body
        response = api.client.post("/v1/chat/completions", json=body)
        assert response.status_code == status, (body, response.text)
        if param is not None:
            assert response.json()["error"]["param"] == param, response.text


def test_operations_on_fine_tuned_models_only_say_so() -> None:
    """Deleting or downloading takes a fine-tuned model (ft:...); a base model's id is a 400
    or a 404 there, while GET /v1/models/{model_id} takes both."""

    def model_id(method: str, path: str) -> dict[str, Any]:
        parameters = DOC["paths"][path][method]["parameters"]
        schema: dict[str, Any] = next(p for p in parameters if p["name"] == "model_id")["schema"]
        return schema

    assert model_id("delete", "/v1/models/{model_id}")["pattern"] == "^ft:"
    assert model_id("get", "/v1/models/{model_id}/content")["pattern"] == "^ft:"
    assert "pattern" not in model_id("get", "/v1/models/{model_id}")

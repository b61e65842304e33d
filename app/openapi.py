"""The OpenAPI document tells the truth: the constraints the API enforces, and where each id
comes from.

FastAPI writes the document from the request models, and some rules live in code instead:
the OpenAI-shaped generation bodies take `messages: list[Any]` and extra keys on purpose (the
service sorts them, with messages that say what to change), the inference server checks the
generation ranges, and a few rules span fields. A client generated from the bare document,
or a fuzzer, sends bodies the API refuses. `describe_api` completes the document after
FastAPI built it, from the same constants the code checks with:

- constraints: chat messages and text parts, the generation ranges (max_tokens 1..2048,
  temperature 0..2, top_p (0, 1], stop, seed, n 1..16, logprobs, response_format, tools),
  which OpenAI parameters are ignored and
  which are refused unless off, predict inputs and parameters, a file's `purpose`, list
  `limit`s, the `ft:` prefix of the ids only fine-tuned models have, LoRA
  `target_modules`, the 16 metadata keys, and the field pairs that exclude each other;
- links (OpenAPI 3.1 `links`) from each create, and each list, to the reads and actions on
  what it returned, and from GET /v1/models and POST /v1/files to the creates that take a
  model or a file, so generated clients and schemathesis's stateful phase can chain calls.

The inference server's limits are repeated here (the API never imports the worker, which
imports torch); tests/app/test_openapi.py compares them with worker/inference/schemas.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from app.files.routes import MAX_FILES_LIMIT
from app.files.service import PURPOSES
from app.openai_compat.schemas import (
    CHAT_UNSUPPORTED,
    COMPLETION_UNSUPPORTED,
    IGNORED,
    MAX_N,
    MAX_TOP_LOGPROBS,
)
from app.pagination import MAX_LIMIT

# the inference server's limits (worker/inference/schemas.py)
MAX_INPUTS = 64
MAX_INPUT_CHARS = 20_000
MAX_MEDIA_CHARS = 16 * 1024 * 1024
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_NEW_TOKENS = 2048
MAX_SEED = 2**63 - 1
MAX_TOOLS = 128
# app/jobs/schemas.py: JobCreate._limits
MAX_METADATA_KEYS = 16

Schema = dict[str, Any]


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _off(values: tuple[Any, ...]) -> Schema:
    """The values of an unsupported parameter that ask for nothing (app/openai_compat)."""
    return {"enum": list(values), "description": "Not supported: only its off values"}


_STOP_STRING = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
GENERATION: dict[str, Schema] = {
    "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
    "top_p": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
    "stop": _nullable(
        {
            "anyOf": [
                _STOP_STRING,
                {
                    "type": "array",
                    "items": _STOP_STRING,
                    "minItems": 1,
                    "maxItems": MAX_STOP_STRINGS,
                },
            ]
        }
    ),
    "seed": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_SEED}),
}
_NEW_TOKENS = _nullable({"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS})
_FALSY: tuple[Any, ...] = (None, False, 0, "", [], {})
_TEXT_PART: Schema = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
_TOOL_CALL: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 256},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256},
                "arguments": {"type": "string", "maxLength": MAX_INPUT_CHARS},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        },
    },
    "required": ["id", "function"],
    "additionalProperties": False,
}
CHAT_MESSAGE: Schema = {
    "type": "object",
    "properties": {
        # "developer" is OpenAI's newer name for "system"
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                {"type": "string", "maxLength": MAX_INPUT_CHARS},
                {"type": "array", "items": _TEXT_PART},
                {"type": "null"},
            ]
        },
        "name": {"type": "string"},
        "refusal": {},
        # an assistant's calls (content may then be null); a tool message's answer to one
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
        "tool_call_id": {"type": "string", "maxLength": 256},
        **{key: _off(_FALSY) for key in ("function_call", "audio")},
    },
    "required": ["role"],
    "additionalProperties": False,
    "allOf": [
        # a tool message names the call it answers
        {
            "if": {"properties": {"role": {"const": "tool"}}, "required": ["role"]},
            "then": {"required": ["tool_call_id"]},
        },
        # content may be left out (or null) only by an assistant that calls tools
        {
            "if": {
                "not": {
                    "properties": {"role": {"const": "assistant"}, "tool_calls": {"minItems": 1}},
                    "required": ["role", "tool_calls"],
                }
            },
            "then": {
                "properties": {"content": {"not": {"type": "null"}}},
                "required": ["content"],
            },
        },
    ],
}
_TOOL: Schema = {
    "type": "object",
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": {"type": "string", "maxLength": MAX_INPUT_CHARS},
                "parameters": {"type": "object"},
                "strict": _nullable({"type": "boolean"}),
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    },
    "required": ["type", "function"],
    "additionalProperties": False,
}
_TOOL_CHOICE: Schema = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
            "required": ["type", "function"],
            "additionalProperties": False,
        },
    ]
}
_RESPONSE_FORMAT: Schema = {
    "type": "object",
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "description": {"type": "string"},
                "schema": {"type": "object"},
                "strict": _nullable({"type": "boolean"}),
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    },
    "required": ["type"],
    "additionalProperties": False,
    # json_schema is given exactly when type is "json_schema"
    "if": {"properties": {"type": {"const": "json_schema"}}},
    "then": {"required": ["json_schema"]},
    "else": {"not": {"required": ["json_schema"]}},
}
_TOP_LOGPROBS = _nullable({"type": "integer", "minimum": 0, "maximum": MAX_TOP_LOGPROBS})
# what the inference server takes besides GENERATION (worker/inference/schemas.py Parameters)
_MORE_GENERATION: dict[str, Schema] = {
    "n": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_N}),
    "logprobs": _nullable({"type": "boolean"}),
    "top_logprobs": _TOP_LOGPROBS,
    "response_format": _nullable(_RESPONSE_FORMAT),
}


def _media_input(kind: str) -> Schema:
    """{"image": ...} or {"audio": ...}: base64 or a data: URL (image/audio classification)."""
    return {
        "type": "object",
        "properties": {kind: {"type": "string", "minLength": 1, "maxLength": MAX_MEDIA_CHARS}},
        "required": [kind],
        "additionalProperties": False,
    }


def _generation_request(own: dict[str, Schema], unsupported: dict[str, Any]) -> dict[str, Any]:
    """The properties of a chat or text completion request; nothing else is accepted."""
    return {
        "model": {"type": "string", "minLength": 1, "maxLength": 512},
        **own,
        "max_tokens": _NEW_TOKENS,
        **GENERATION,
        "n": _MORE_GENERATION["n"],
        "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable({"$ref": "#/components/schemas/StreamOptions"}),
        **{name: {"description": "Accepted and ignored"} for name in sorted(IGNORED)},
        **{name: _off(off) for name, (_, off) in unsupported.items()},
    }


# stream_options only with stream: true
_STREAM_OPTIONS_NEED_STREAM: Schema = {
    "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
    "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
}


def _both(first: str, second: str, schema: Schema) -> Schema:
    """`not` both fields given (with a value of `schema`, i.e. not null or "auto")."""
    return {
        "not": {
            "properties": {first: schema, second: schema},
            "required": [first, second],
        }
    }


def _constrain(components: dict[str, Schema]) -> None:
    chat = components["ChatCompletionRequest"]
    chat["properties"] = _generation_request(
        {
            "messages": {
                "type": "array",
                "items": CHAT_MESSAGE,
                "minItems": 1,
                "maxItems": MAX_MESSAGES,
            },
            "max_completion_tokens": _NEW_TOKENS,
            "logprobs": _MORE_GENERATION["logprobs"],
            "top_logprobs": _TOP_LOGPROBS,
            "response_format": _MORE_GENERATION["response_format"],
            "tools": _nullable(
                {"type": "array", "items": _TOOL, "minItems": 1, "maxItems": MAX_TOOLS}
            ),
            "tool_choice": _nullable(_TOOL_CHOICE),
        },
        CHAT_UNSUPPORTED,
    )
    chat["additionalProperties"] = False
    chat["allOf"] = [
        _both("max_tokens", "max_completion_tokens", {"type": "integer"}),
        _STREAM_OPTIONS_NEED_STREAM,
        # top_logprobs needs logprobs; a tool_choice other than "none" needs tools
        {
            "if": {
                "properties": {"top_logprobs": {"type": "integer", "minimum": 1}},
                "required": ["top_logprobs"],
            },
            "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
        },
        {
            "if": {
                "properties": {"tool_choice": {"not": {"enum": ["none", None]}}},
                "required": ["tool_choice"],
            },
            "then": {"properties": {"tools": {"type": "array"}}, "required": ["tools"]},
        },
    ]

    prompt_text = {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS}
    completion = components["CompletionRequest"]
    completion["properties"] = _generation_request(
        {
            "prompt": {
                "anyOf": [
                    prompt_text,
                    # a list of one prompt (token ids and several prompts are refused)
                    {"type": "array", "items": prompt_text, "minItems": 1, "maxItems": 1},
                ]
            },
            # the legacy API's logprobs: the k likeliest tokens per position
            "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 5}),
        },
        COMPLETION_UNSUPPORTED,
    )
    completion["additionalProperties"] = False
    completion["allOf"] = [_STREAM_OPTIONS_NEED_STREAM]

    chat_input = {
        "type": "object",
        "properties": {
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"enum": ["system", "user", "assistant", "tool"]},
                        "content": {"type": "string", "maxLength": MAX_INPUT_CHARS},
                        "tool_calls": _nullable({"type": "array", "items": _TOOL_CALL}),
                        "tool_call_id": _nullable({"type": "string", "maxLength": 256}),
                    },
                    "required": ["role"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": MAX_MESSAGES,
            },
            "tools": _nullable(
                {"type": "array", "items": _TOOL, "minItems": 1, "maxItems": MAX_TOOLS}
            ),
            "tool_choice": _nullable(_TOOL_CHOICE),
        },
        "required": ["messages"],
        "additionalProperties": False,
    }
    for name in ("PredictRequest", "ModelPredictRequest"):
        properties = components[name]["properties"]
        properties["inputs"]["items"] = {
            "anyOf": [prompt_text, chat_input, _media_input("image"), _media_input("audio")]
        }
        properties["parameters"] = {
            "type": "object",
            "description": "classification: top_k; causal LM: the generation parameters",
            "properties": {
                "top_k": _nullable({"type": "integer", "minimum": 1}),
                "max_new_tokens": _NEW_TOKENS,
                **GENERATION,
                **_MORE_GENERATION,
            },
            "additionalProperties": False,
        }

    for name in ("LoraType", "QLoraType"):
        components[name]["properties"]["target_modules"] = _nullable(
            {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": 128},
                        "minItems": 1,
                    },
                    {"const": "all-linear"},
                ]
            }
        )
    job = components["JobCreate"]
    job["properties"]["metadata"]["anyOf"][0]["maxProperties"] = MAX_METADATA_KEYS
    job["allOf"] = [_both("method", "hyperparameters", {"type": "object"})]
    components["Hyperparameters"]["allOf"] = [
        _both("learning_rate", "learning_rate_multiplier", {"type": "number"})
    ]

    upload = components["Body_upload_file_v1_files_post"]["properties"]
    upload["purpose"]["enum"] = list(PURPOSES)


# operations on fine-tuned models only (named ft:<base>:<suffix>:<job>[:ckpt-step-N]): a
# base model's id is a 400 or a 404 there
_FINE_TUNED_ONLY = {("delete", "/v1/models/{model_id}"), ("get", "/v1/models/{model_id}/content")}


def _parameters(paths: dict[str, Any]) -> None:
    for path, operations in paths.items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and parameter["name"] == "limit":
                    most = MAX_FILES_LIMIT if path == "/v1/files" else MAX_LIMIT
                    parameter["schema"].update(minimum=1, maximum=most)
                if parameter["name"] == "model_id" and (method, path) in _FINE_TUNED_ONLY:
                    parameter["schema"]["pattern"] = "^ft:"


# (source, [(link name, target, parameters, request body)]); an operation is "METHOD /path"
_JOB_ACTIONS = [
    ("GetJob", "GET /v1/fine_tuning/jobs/{job_id}"),
    ("CancelJob", "POST /v1/fine_tuning/jobs/{job_id}/cancel"),
    ("PauseJob", "POST /v1/fine_tuning/jobs/{job_id}/pause"),
    ("ResumeJob", "POST /v1/fine_tuning/jobs/{job_id}/resume"),
    ("ListJobEvents", "GET /v1/fine_tuning/jobs/{job_id}/events"),
    ("ListJobCheckpoints", "GET /v1/fine_tuning/jobs/{job_id}/checkpoints"),
    ("GetJobMetrics", "GET /v1/fine_tuning/jobs/{job_id}/metrics"),
]
_SWEEP_ACTIONS = [
    ("GetSweep", "GET /v1/fine_tuning/sweeps/{sweep_id}"),
    ("CancelSweep", "POST /v1/fine_tuning/sweeps/{sweep_id}/cancel"),
    ("ListSweepEvents", "GET /v1/fine_tuning/sweeps/{sweep_id}/events"),
]
_FILE_ACTIONS = [
    ("GetFile", "GET /v1/files/{file_id}"),
    ("GetFileContent", "GET /v1/files/{file_id}/content"),
    ("ListFileSamples", "GET /v1/files/{file_id}/samples"),
    ("DeleteFile", "DELETE /v1/files/{file_id}"),
]
_DEPLOYMENT_ACTIONS = [
    ("GetDeployment", "GET /v1/deployments/{dep_id}"),
    ("Predict", "POST /v1/deployments/{dep_id}/predict"),
    ("DeleteDeployment", "DELETE /v1/deployments/{dep_id}"),
]
_MODEL_ACTIONS = [
    ("GetModel", "GET /v1/models/{model_id}"),
    ("DownloadModel", "GET /v1/models/{model_id}/content"),
    ("DeleteModel", "DELETE /v1/models/{model_id}"),
]
_MODEL_USES = [
    ("CreateJobWithModel", "POST /v1/fine_tuning/jobs", "model"),
    ("DeployModel", "POST /v1/deployments", "model"),
    ("PredictWithModel", "POST /v1/predict", "model"),
    ("ChatWithModel", "POST /v1/chat/completions", "model"),
    ("CompleteWithModel", "POST /v1/completions", "model"),
    ("EvaluateModel", "POST /v1/evaluations", "model"),
]
Link = tuple[str, str, dict[str, str], dict[str, str] | None]


def _reads(actions: list[tuple[str, str]], param: str, id_at: str) -> list[Link]:
    return [(name, target, {param: id_at}, None) for name, target in actions]


LINKS: dict[str, list[Link]] = {
    "POST /v1/files": [
        *_reads(_FILE_ACTIONS, "file_id", "$response.body#/id"),
        (
            "CreateJobWithFile",
            "POST /v1/fine_tuning/jobs",
            {},
            {"training_file": "$response.body#/id"},
        ),
        ("EvaluateOnFile", "POST /v1/evaluations", {}, {"file": "$response.body#/id"}),
    ],
    "GET /v1/files": _reads(_FILE_ACTIONS, "file_id", "$response.body#/data/0/id"),
    "GET /v1/files/{file_id}/samples": [
        (
            "GetSampleContent",
            "GET /v1/files/{file_id}/samples/{index}/content",
            {"file_id": "$request.path.file_id", "index": "$response.body#/data/0/index"},
            None,
        )
    ],
    "POST /v1/fine_tuning/jobs": _reads(_JOB_ACTIONS, "job_id", "$response.body#/id"),
    "GET /v1/fine_tuning/jobs": _reads(_JOB_ACTIONS, "job_id", "$response.body#/data/0/id"),
    "POST /v1/fine_tuning/sweeps": _reads(_SWEEP_ACTIONS, "sweep_id", "$response.body#/id"),
    "GET /v1/fine_tuning/sweeps": _reads(_SWEEP_ACTIONS, "sweep_id", "$response.body#/data/0/id"),
    "GET /v1/fine_tuning/jobs/{job_id}/checkpoints": [
        (
            "DownloadCheckpoint",
            "GET /v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/content",
            {"job_id": "$request.path.job_id", "checkpoint_id": "$response.body#/data/0/id"},
            None,
        ),
        (
            "CreateJobFromCheckpoint",
            "POST /v1/fine_tuning/jobs",
            {},
            {"from_checkpoint": "$response.body#/data/0/id"},
        ),
    ],
    "GET /v1/models": [
        *_reads(_MODEL_ACTIONS, "model_id", "$response.body#/data/0/id"),
        *[
            (name, target, {}, {field: "$response.body#/data/0/id"})
            for name, target, field in _MODEL_USES
        ],
    ],
    "POST /v1/models/pull": [
        ("GetPull", "GET /v1/models/pulls/{pull_id}", {"pull_id": "$response.body#/id"}, None),
        (
            "GetPulledModel",
            "GET /v1/models/{model_id}",
            {"model_id": "$response.body#/model"},
            None,
        ),
    ],
    "GET /v1/models/pulls": [
        (
            "GetPull",
            "GET /v1/models/pulls/{pull_id}",
            {"pull_id": "$response.body#/data/0/id"},
            None,
        )
    ],
    "POST /v1/deployments": _reads(_DEPLOYMENT_ACTIONS, "dep_id", "$response.body#/id"),
    "GET /v1/deployments": _reads(_DEPLOYMENT_ACTIONS, "dep_id", "$response.body#/data/0/id"),
    "POST /v1/evaluations": [
        (
            "GetEvaluation",
            "GET /v1/evaluations/{evaluation_id}",
            {"evaluation_id": "$response.body#/id"},
            None,
        )
    ],
    "GET /v1/evaluations": [
        (
            "GetEvaluation",
            "GET /v1/evaluations/{evaluation_id}",
            {"evaluation_id": "$response.body#/data/0/id"},
            None,
        )
    ],
}


def _link(paths: dict[str, Any]) -> None:
    def operation(key: str) -> Schema:
        method, path = key.split(" ", 1)
        found: Schema = paths[path][method.lower()]
        return found

    for source, links in LINKS.items():
        responses = operation(source)["responses"]
        response = responses.get("200") or responses["202"]  # 202: a pull runs on
        response["links"] = {
            name: {
                "operationId": operation(target)["operationId"],
                **({"parameters": parameters} if parameters else {}),
                **({"requestBody": body} if body else {}),
            }
            for name, target, parameters, body in links
        }


def describe_api(app: FastAPI) -> None:
    """Complete `app.openapi()` with the constraints and links above (once, then cached)."""
    build: Callable[[], Schema] = app.openapi
    described: list[Schema] = []

    def openapi() -> Schema:
        if not described:
            document = build()
            _constrain(document["components"]["schemas"])
            _parameters(document["paths"])
            _link(document["paths"])
            described.append(document)
        return described[0]

    app.openapi = openapi  # type: ignore[method-assign]

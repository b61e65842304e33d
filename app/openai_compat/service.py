"""Translate OpenAI generation requests to the inference server's predict, and back.

A request becomes a `Generation` (the model spec, one input, the parameters), which the
inference server answers with a prediction or a stream of events (docs/internals.md);
those become OpenAI's chat.completion / text_completion objects or their chunks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import task_plugins
from app.deployments.limits import ConcurrencyLimits, Slot
from app.deployments.lookup import Lookup
from app.failures import APIError
from app.ids import new_id
from app.inference_client import InferenceClient, PredictStream
from app.openai_compat.schemas import ChatCompletionRequest, CompletionRequest

# roles the inference server renders with the chat template; "developer" is OpenAI's newer
# name for "system"
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_MESSAGE_KEYS = frozenset({"role", "content", "name", "refusal", "tool_calls", "tool_call_id"})


@dataclass(frozen=True)
class Generation:
    model: str  # as the client named it; echoed in the response
    spec: dict[str, Any]
    input: str | dict[str, Any]
    parameters: dict[str, Any]
    # (inference server's name, client's name) prefixes, to report errors in its words
    names: list[tuple[str, str]] = field(default_factory=list)
    id: str = field(default_factory=lambda: new_id("chatcmpl"))
    created: int = field(default_factory=lambda: int(time.time()))


async def generative_spec(lookup: Lookup, model: str, project_id: str) -> dict[str, Any]:
    """The serving spec of a model that generates text; a classifier is refused. Another
    project's fine-tuned model reads as missing (404)."""
    spec = await lookup.spec(model, project_id, param="model")
    if "chat" not in task_plugins.get(spec["task"]).predictor.inputs:
        raise APIError(
            400,
            f"Model {model} is a {spec['task']} model: it predicts labels and cannot generate "
            "text. Deploy it with POST /v1/deployments and call POST "
            "/v1/deployments/{id}/predict instead, or pick a causal-lm model.",
            param="model",
            code="model_not_generative",
        )
    return spec


async def chat_generation(
    lookup: Lookup, body: ChatCompletionRequest, project_id: str
) -> Generation:
    body.check()
    messages = [_message(m, f"messages.{i}") for i, m in enumerate(body.messages)]
    spec = await generative_spec(lookup, body.model, project_id)
    limit, limit_name = body.token_limit()
    chat: dict[str, Any] = {"messages": messages}
    if body.tools:
        chat["tools"] = body.tools
    if body.tool_choice is not None:
        chat["tool_choice"] = body.tool_choice
    return Generation(
        model=body.model,
        spec=spec,
        input=chat,
        parameters=_parameters(body, limit),
        names=[
            ("parameters.max_new_tokens", limit_name),
            ("parameters.", ""),
            ("inputs.0.messages", "messages"),
            ("inputs.0.tools", "tools"),
            ("inputs.0.tool_choice", "tool_choice"),
            ("inputs.0", "messages"),
            ("inputs", "messages"),
        ],
    )


async def completion_generation(
    lookup: Lookup, body: CompletionRequest, project_id: str
) -> Generation:
    body.check()
    prompt = _prompt(body.prompt)
    spec = await generative_spec(lookup, body.model, project_id)
    parameters = _parameters(body, body.max_tokens)
    if body.logprobs is not None:
        # the legacy API's logprobs=k is chat's logprobs=true, top_logprobs=k
        parameters |= {"logprobs": True, "top_logprobs": body.logprobs}
    return Generation(
        model=body.model,
        spec=spec,
        input=prompt,
        parameters=parameters,
        names=[
            ("parameters.max_new_tokens", "max_tokens"),
            ("parameters.top_logprobs", "logprobs"),
            ("parameters.", ""),
            ("inputs.0", "prompt"),
            ("inputs", "prompt"),
        ],
        id=new_id("cmpl"),
    )


async def predict(
    client: InferenceClient, limits: ConcurrencyLimits, generation: Generation
) -> list[dict[str, Any]]:
    """The n predictions (choices) of the one input."""
    try:
        with limits.acquire(generation.spec["key"]):
            body = await client.predict(generation.spec, [generation.input], generation.parameters)
    except APIError as exc:
        raise public_error(exc, generation.names) from exc
    predictions: list[dict[str, Any]] = body["predictions"]
    return predictions


async def start_stream(
    client: InferenceClient, limits: ConcurrencyLimits, generation: Generation
) -> tuple[PredictStream, Slot]:
    """The stream and the slot it holds until it ends (the caller releases it)."""
    slot = limits.acquire(generation.spec["key"])
    try:
        stream = await client.stream_predict(
            generation.spec, generation.input, generation.parameters
        )
    except APIError as exc:
        slot.release()
        raise public_error(exc, generation.names) from exc
    except BaseException:
        slot.release()
        raise
    return stream, slot


def chat_completion(generation: Generation, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": generation.id,
        "object": "chat.completion",
        "created": generation.created,
        "model": generation.model,
        "choices": [
            {
                "index": index,
                "message": _chat_message(prediction),
                "finish_reason": prediction["finish_reason"],
                "logprobs": _chat_logprobs(prediction.get("logprobs")),
            }
            for index, prediction in enumerate(predictions)
        ],
        "usage": usage(predictions),
        "system_fingerprint": None,
    }


def text_completion(generation: Generation, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    offset = len(generation.input) if isinstance(generation.input, str) else 0
    return {
        "id": generation.id,
        "object": "text_completion",
        "created": generation.created,
        "model": generation.model,
        "choices": [
            {
                "index": index,
                "text": prediction["text"],
                "finish_reason": prediction["finish_reason"],
                "logprobs": _legacy_logprobs(prediction.get("logprobs"), offset),
            }
            for index, prediction in enumerate(predictions)
        ],
        "usage": usage(predictions),
        "system_fingerprint": None,
    }


async def chat_chunks(
    generation: Generation, events: PredictStream, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    """chat.completion.chunk objects: each choice's role, its text (and logprobs) as they
    come, its tool calls, its finish reason, then (when asked for with
    stream_options.include_usage) the usage with no choices."""

    def chunk(
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": _chat_logprobs(logprobs),
        }
        return _chunk(generation, "chat.completion.chunk", choice, include_usage)

    for index in range(int(generation.parameters.get("n", 1))):
        yield chunk(index, {"role": "assistant", "content": ""})
    async for event in _public_events(events, generation):
        if "text" in event:
            if event["text"] or event.get("logprobs"):
                index = event.get("index", 0)
                yield chunk(index, {"content": event["text"]}, logprobs=event.get("logprobs"))
            continue
        for index, choice in enumerate(event.get("choices") or [event]):
            if choice.get("tool_calls"):
                calls = _tool_calls(choice["tool_calls"])
                yield chunk(index, {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
            yield chunk(index, {}, choice["finish_reason"])
        if include_usage:
            totals = usage([event])
            yield {**_chunk(generation, "chat.completion.chunk", None, True), "usage": totals}
        return


async def completion_chunks(
    generation: Generation, events: PredictStream, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    """text_completion objects with each choice's text (and logprobs) as it comes, then the
    finish reasons (and usage)."""
    offsets: dict[int, int] = {}
    start = len(generation.input) if isinstance(generation.input, str) else 0

    def chunk(
        index: int,
        text: str,
        finish_reason: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        offset = offsets.get(index, start)
        legacy = _legacy_logprobs(logprobs, offset)
        if legacy is not None:
            offsets[index] = offset + sum(len(t) for t in legacy["tokens"])
        choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": legacy}
        return _chunk(generation, "text_completion", choice, include_usage)

    async for event in _public_events(events, generation):
        if "text" in event:
            if event["text"] or event.get("logprobs"):
                index = event.get("index", 0)
                yield chunk(index, event["text"], logprobs=event.get("logprobs"))
            continue
        for index, choice in enumerate(event.get("choices") or [event]):
            yield chunk(index, "", choice["finish_reason"])
        if include_usage:
            totals = usage([event])
            yield {**_chunk(generation, "text_completion", None, True), "usage": totals}
        return


def usage(predictions: list[dict[str, Any]]) -> dict[str, int]:
    """Tokens of a request: its prompt once, the completion tokens of all its choices."""
    prompt = int(predictions[0]["prompt_tokens"])
    completion = sum(int(p["completion_tokens"]) for p in predictions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def public_error(exc: APIError, names: list[tuple[str, str]]) -> APIError:
    """The inference server's error, with its field names replaced by the client's."""
    param = exc.param
    if param is None:
        return exc
    for internal, public in names:
        if internal.endswith("."):
            matches = param.startswith(internal)
        else:
            matches = param == internal or param.startswith(internal + ".")
        if matches:
            renamed = public + param[len(internal) :]
            message = exc.message
            if message.startswith(param):
                message = renamed + message[len(param) :]
            return APIError(exc.status, message, param=renamed, code=exc.code, headers=exc.headers)
    return exc


async def _public_events(
    events: PredictStream, generation: Generation
) -> AsyncIterator[dict[str, Any]]:
    try:
        async for event in events:
            yield event
    except APIError as exc:
        raise public_error(exc, generation.names) from exc
    finally:
        await events.aclose()


def _chunk(
    generation: Generation, kind: str, choice: dict[str, Any] | None, include_usage: bool
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": generation.id,
        "object": kind,
        "created": generation.created,
        "model": generation.model,
        "choices": [choice] if choice is not None else [],
        "system_fingerprint": None,
    }
    if include_usage:
        chunk["usage"] = None  # only the last chunk carries it
    return chunk


def _parameters(
    body: ChatCompletionRequest | CompletionRequest, limit: int | None
) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "max_new_tokens": limit,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop,
        "seed": body.seed,
        "n": body.n,
    }
    if isinstance(body, ChatCompletionRequest):
        parameters |= {
            "logprobs": body.logprobs or None,
            "top_logprobs": body.top_logprobs if body.logprobs else None,
            "response_format": body.response_format,
        }
    return {name: value for name, value in parameters.items() if value is not None}


def _chat_message(prediction: dict[str, Any]) -> dict[str, Any]:
    calls = prediction.get("tool_calls")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": prediction["text"] if prediction["text"] or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = _tool_calls(calls)
    return message


def _tool_calls(calls: list[dict[str, str]]) -> list[dict[str, Any]]:
    """OpenAI's tool_calls of the inference server's parsed calls, each with a fresh id."""
    return [
        {
            "id": new_id("call"),
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in calls
    ]


def _chat_logprobs(items: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if items is None else {"content": items, "refusal": None}


def _legacy_logprobs(items: list[dict[str, Any]] | None, offset: int) -> dict[str, Any] | None:
    """The completions API's logprobs: parallel lists, top_logprobs as {token: logprob}."""
    if items is None:
        return None
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item["token"])
    return {
        "tokens": [i["token"] for i in items],
        "token_logprobs": [i["logprob"] for i in items],
        "top_logprobs": [{t["token"]: t["logprob"] for t in i["top_logprobs"]} for i in items],
        "text_offset": offsets,
    }


def _message(message: Any, where: str) -> dict[str, Any]:
    """An OpenAI chat message as the inference server takes it: role and text content, an
    assistant's tool_calls, a tool message's tool_call_id."""
    if not isinstance(message, dict):
        raise APIError(400, f"{where} must be an object with role and content.", param=where)
    role = message.get("role")
    if role == "function":
        raise APIError(
            400,
            f"{where}.role is 'function', the deprecated form of tool results: send a message "
            "with role 'tool' and its tool_call_id instead.",
            param=f"{where}.role",
            code="unsupported_parameter",
        )
    if not isinstance(role, str) or role not in _ROLES:
        raise APIError(
            400,
            f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}.",
            param=f"{where}.role",
        )
    for key in ("function_call", "audio"):
        if message.get(key):
            raise APIError(
                400,
                f"{where}.{key} is not supported: send an assistant's calls as tool_calls.",
                param=f"{where}.{key}",
                code="unsupported_parameter",
            )
    unknown = set(message) - _MESSAGE_KEYS - {"function_call", "audio"}
    if unknown:
        name = sorted(unknown)[0]
        raise APIError(
            400,
            f"{where}.{name} is not a message field; a message has role, content and "
            "optionally name (tool_calls for an assistant, tool_call_id for a tool).",
            param=f"{where}.{name}",
        )
    out: dict[str, Any] = {"role": _ROLES[role]}
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        # content may be null next to tool calls
        if message.get("content") is not None:
            out["content"] = _content(message.get("content"), f"{where}.content")
        out["tool_calls"] = calls
    else:
        out["content"] = _content(message.get("content"), f"{where}.content")
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise APIError(
                400,
                f"{where}.tool_call_id is required: the id of the assistant's tool call this "
                "message answers.",
                param=f"{where}.tool_call_id",
            )
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        raise APIError(400, f"{where} is required.", param=where)
    if not isinstance(content, list):
        raise APIError(400, f"{where} must be a string or a list of text parts.", param=where)
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(
                400,
                f"{where}.{index} is a part of type {kind!r}; Tunery models take text parts only "
                '({"type": "text", "text": ...}).',
                param=f"{where}.{index}",
                code="unsupported_parameter",
            )
        if not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}.{index}.text must be a string.", param=f"{where}.{index}")
        texts.append(part["text"])
    return "\n".join(texts)


def _prompt(prompt: str | list[Any]) -> str:
    if isinstance(prompt, str):
        return prompt
    token_ids = bool(prompt) and all(isinstance(p, int) for p in prompt)
    if token_ids or any(isinstance(p, list) for p in prompt):
        raise APIError(
            400,
            "prompt holds token ids; Tunery takes the prompt as text.",
            param="prompt",
            code="unsupported_parameter",
        )
    if len(prompt) != 1 or not isinstance(prompt[0], str):
        raise APIError(
            400,
            f"prompt must be a string (or a list of one string); got a list of {len(prompt)}: "
            "send one request per prompt.",
            param="prompt",
        )
    return prompt[0]

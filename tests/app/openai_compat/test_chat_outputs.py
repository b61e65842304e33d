"""n, logprobs, response_format and tools through the openai SDK, against a live inference
server: the objects come back in OpenAI's shapes (validated by the SDK's own types), also
when streamed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.app.openai_compat.sdk import Sdk
from tests.support.tool_models import add_tool_llama

MESSAGES: list[Any] = [{"role": "user", "content": "what is the weather in paris?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["answer", "score"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "london"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="session")
def tool_model(tiny_models: Path) -> str:
    return add_tool_llama(tiny_models)


def test_n_choices_are_distinct_and_repeat_with_the_seed(chat_sdk: Sdk) -> None:
    chat = chat_sdk.client.chat.completions
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 9,
        "n": 2,
    }
    raw = chat.with_raw_response.create(**body)
    completion = ChatCompletion.model_validate(raw.http_response.json())
    assert [c.index for c in completion.choices] == [0, 1]
    texts = [c.message.content for c in completion.choices]
    assert texts[0] != texts[1]
    assert [c.message.content for c in chat.create(**body).choices] == texts
    assert completion.usage is not None
    one = chat.create(**{**body, "n": 1})
    assert one.choices[0].message.content == texts[0]
    assert one.usage is not None and completion.usage.prompt_tokens == one.usage.prompt_tokens


def test_chat_logprobs_in_openai_shape(chat_sdk: Sdk) -> None:
    raw = chat_sdk.client.chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    (choice,) = ChatCompletion.model_validate(raw.http_response.json()).choices
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for token in choice.logprobs.content:
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)  # greedy
        assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1 + 1e-6


def test_completion_logprobs_in_the_legacy_shape(chat_sdk: Sdk) -> None:
    prompt = "the movie was"
    raw = chat_sdk.client.completions.with_raw_response.create(
        model="tiny-llama", prompt=prompt, max_tokens=5, temperature=0, logprobs=2
    )
    (choice,) = Completion.model_validate(raw.http_response.json()).choices
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset[0] == len(prompt)
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(top) <= 2 and top[token] == pytest.approx(logprob)


def test_streams_carry_each_choice_and_its_logprobs(chat_sdk: Sdk) -> None:
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 4,
        "n": 2,
        "logprobs": True,
    }
    chat = chat_sdk.client.chat.completions
    whole = chat.create(**body)
    texts, tokens, finished = ["", ""], [[], []], [None, None]  # type: ignore[var-annotated]
    for chunk in chat.create(stream=True, **body):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens[choice.index] += [t.token for t in choice.logprobs.content]
            finished[choice.index] = choice.finish_reason or finished[choice.index]
    for index, choice in enumerate(whole.choices):
        assert texts[index] == choice.message.content
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert tokens[index] == [t.token for t in choice.logprobs.content]
        assert finished[index] == choice.finish_reason


def test_json_schema_response_format_yields_schema_valid_json(chat_sdk: Sdk) -> None:
    completion = chat_sdk.client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=60,
        temperature=1.0,
        seed=1,
        n=2,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True},
        },
    )
    for choice in completion.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_the_keyword(chat_sdk: Sdk) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as refused:
        chat_sdk.client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, response_format=response_format
        )
    assert refused.value.param == "response_format.json_schema.schema.properties.a.multipleOf"
    assert "multipleOf" in refused.value.body["message"]  # type: ignore[index]


def test_tool_calls_come_back_parsed_and_a_tool_answer_continues_the_chat(
    chat_sdk: Sdk, tool_model: str
) -> None:
    chat = chat_sdk.client.chat.completions
    raw = chat.with_raw_response.create(
        model=tool_model,
        messages=MESSAGES,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    (choice,) = ChatCompletion.model_validate(raw.http_response.json()).choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    # the call and its answer go back in: the template renders both
    history: list[Any] = [
        *MESSAGES,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
    ]
    follow_up = chat.create(
        model=tool_model,
        messages=history,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=4,
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length")

    streamed = list(
        chat.create(
            model=tool_model,
            messages=MESSAGES,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=120,
            temperature=0,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    (streamed_call,) = [t for d in deltas for t in d.tool_calls or []]
    assert streamed_call.function is not None
    assert streamed_call.function.arguments == call.function.arguments
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(d.content or "" for d in deltas)


def test_tools_on_a_model_whose_template_has_none_are_a_400(chat_sdk: Sdk) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        chat_sdk.client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, tools=[WEATHER]
        )
    assert refused.value.param == "tools" and refused.value.code == "tools_unsupported"
    with pytest.raises(openai.BadRequestError) as unknown:
        chat_sdk.client.chat.completions.create(
            model="tiny-llama",
            messages=MESSAGES,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert unknown.value.param is not None and unknown.value.param.startswith("tool")

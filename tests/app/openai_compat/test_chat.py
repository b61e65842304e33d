"""chat.completions and completions through the openai SDK, against a live inference server.

The model is the tiny-llama base (random weights): what is checked is that each OpenAI
parameter reaches the generator, and that its output comes back in OpenAI's shapes, equal
to what the inference server itself answers for the same input.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.app.openai_compat.conftest import tiny_llama_spec
from tests.app.openai_compat.sdk import Sdk, inference_streams

MESSAGES: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "question: say hello answer:"},
]
PROMPT = "question: what is the capital of france? answer:"


def generate(sdk: Sdk, inference_url: str, item: Any, **parameters: Any) -> dict[str, Any]:
    """What the inference server answers itself for one input."""
    assert sdk.api.settings.models_dir is not None
    body = {
        "model": tiny_llama_spec(sdk.api.settings.models_dir),
        "inputs": [item],
        "parameters": parameters,
    }
    response = httpx.post(f"{inference_url}/internal/predict", json=body, timeout=120)
    assert response.status_code == 200, response.text
    prediction: dict[str, Any] = response.json()["predictions"][0]
    return prediction


def test_chat_completion_is_the_generation_in_openai_shape(
    chat_sdk: Sdk, inference_url: str
) -> None:
    chat = chat_sdk.client.chat.completions
    raw = chat.with_raw_response.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=6, temperature=0
    )
    completion = ChatCompletion.model_validate(raw.http_response.json())  # strict
    expected = generate(
        chat_sdk, inference_url, {"messages": MESSAGES}, max_new_tokens=6, temperature=0
    )
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == expected["text"]
    assert choice.finish_reason == expected["finish_reason"] and choice.index == 0
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected["prompt_tokens"] > 0
    assert completion.usage.completion_tokens == expected["completion_tokens"] > 0
    assert (
        completion.usage.total_tokens == expected["prompt_tokens"] + expected["completion_tokens"]
    )
    assert completion.model == "tiny-llama" and completion.id.startswith("chatcmpl-")

    # OpenAI's other spellings of the same request, and parameters that change nothing
    same = chat.create(
        model="tiny-llama",
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": MESSAGES[1]["content"], "name": "ann"},
        ],
        max_completion_tokens=6,
        temperature=0,
        n=1,
        user="user-1",
        store=False,
        metadata={"team": "migration"},
        service_tier="auto",
        safety_identifier="user-1",
        prompt_cache_key="k",
        parallel_tool_calls=False,
        frequency_penalty=0,
        logprobs=False,
        response_format={"type": "text"},
    )
    assert same.choices[0].message.content == expected["text"]


def test_stop_seed_and_top_p_reach_the_generator(chat_sdk: Sdk, inference_url: str) -> None:
    chat = chat_sdk.client.chat.completions
    full = chat.create(model="tiny-llama", messages=MESSAGES, max_tokens=8, temperature=0)
    text = full.choices[0].message.content or ""
    assert len(text) >= 2, text
    stop = text[len(text) // 2]
    cut = chat.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=8, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"

    sampled = [
        chat.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=8, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    expected = generate(
        chat_sdk,
        inference_url,
        {"messages": MESSAGES},
        max_new_tokens=8,
        temperature=1.0,
        top_p=0.9,
        seed=7,
    )
    assert sampled == [expected["text"]] * 2


def test_completion_is_the_generation_in_openai_shape(chat_sdk: Sdk, inference_url: str) -> None:
    completions = chat_sdk.client.completions
    raw = completions.with_raw_response.create(
        model="tiny-llama", prompt=PROMPT, max_tokens=5, temperature=0
    )
    completion = Completion.model_validate(raw.http_response.json())
    expected = generate(chat_sdk, inference_url, PROMPT, max_new_tokens=5, temperature=0)
    (choice,) = completion.choices
    assert (choice.text, choice.finish_reason) == (expected["text"], expected["finish_reason"])
    assert completion.usage is not None
    assert completion.usage.completion_tokens == expected["completion_tokens"]
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"
    as_list = completions.create(model="tiny-llama", prompt=[PROMPT], max_tokens=5, temperature=0)
    assert as_list.choices[0].text == expected["text"]


def test_streamed_chat_is_the_same_text_in_chunks(chat_sdk: Sdk) -> None:
    chat = chat_sdk.client.chat.completions
    whole = chat.create(model="tiny-llama", messages=MESSAGES, max_tokens=6, temperature=0)
    stream = chat.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]
    # the usage comes last, in a chunk without choices, as OpenAI sends it
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_completion_without_usage(chat_sdk: Sdk) -> None:
    completions = chat_sdk.client.completions
    whole = completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=5, temperature=0)
    chunks = list(
        completions.create(
            model="tiny-llama", prompt=PROMPT, max_tokens=5, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None and c.object == "text_completion" for c in chunks)


def test_streams_arrive_piece_by_piece(chat_sdk: Sdk, inference_url: str) -> None:
    assert chat_sdk.api.settings.models_dir is not None
    if not inference_streams(inference_url, tiny_llama_spec(chat_sdk.api.settings.models_dir)):
        pytest.skip(
            "this inference server answers predict without server-sent events: streams come "
            "back in one chunk until it streams (docs/internals.md)"
        )
    stream = chat_sdk.client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=8, temperature=0, stream=True
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2, pieces


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"n": 17}, "n", "16"),
        ({"presence_penalty": 0.5}, "presence_penalty", "repetition penalties"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "repetition penalties"),
        ({"logit_bias": {"5": 10}}, "logit_bias", "logit bias"),
        ({"function_call": {"name": "f"}}, "function_call", "send tool_choice instead"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "reasoning"),
        ({"modalities": ["text", "audio"]}, "modalities", "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction", "predicted"),
        ({"web_search_options": {"search_context_size": "low"}}, "web_search_options", "web"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
        ({"functions": [{"name": "f"}]}, "functions", "send tools instead"),
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
        ({"extra_body": {"beam_width": 3}}, "beam_width", "Unknown parameter"),
        ({"max_tokens": 5000}, "max_tokens", "2048"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens", "not both"),
        ({"temperature": 3}, "temperature", "2"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
        ({"model": "tiny-bert"}, "model", "/v1/deployments/{id}/predict"),
        (
            {"messages": [{"role": "tool", "content": "42"}]},
            "messages.0.tool_call_id",
            "is required",
        ),
        (
            {"messages": [{"role": "function", "content": "42", "name": "f"}]},
            "messages.0.role",
            "role 'tool'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content.0",
            "text parts only",
        ),
        ({"messages": [{"role": "user", "content": "x" * 20_001}]}, "messages", "20000"),
    ],
)
def test_chat_refusals_name_the_parameter(
    chat_sdk: Sdk, change: dict[str, Any], param: str, says: str
) -> None:
    body: dict[str, Any] = {"model": "tiny-llama", "messages": MESSAGES, **change}
    with pytest.raises(openai.BadRequestError) as refused:
        chat_sdk.client.chat.completions.create(**body)
    assert refused.value.param is not None and refused.value.param.startswith(param)
    assert says in refused.value.body["message"]  # type: ignore[index]


def test_stream_refusals_come_before_the_stream(chat_sdk: Sdk) -> None:
    for change in ({"model": "tiny-bert"}, {"max_tokens": 5000}):
        body: dict[str, Any] = {"model": "tiny-llama", "messages": MESSAGES, **change}
        with pytest.raises(openai.BadRequestError):
            chat_sdk.client.chat.completions.create(stream=True, **body)
    with pytest.raises(openai.NotFoundError) as missing:
        chat_sdk.client.chat.completions.create(model="ft:nope", messages=MESSAGES, stream=True)
    assert missing.value.param == "model"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
    ],
)
def test_completion_refusals_name_the_parameter(
    chat_sdk: Sdk, change: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "tiny-llama", "prompt": PROMPT, **change}
    with pytest.raises(openai.BadRequestError) as refused:
        chat_sdk.client.completions.create(**body)
    assert refused.value.param == param, refused.value.body


def test_inference_down_is_a_retryable_503(sdk: Sdk) -> None:
    # the fixture's inference server address has nothing listening
    with pytest.raises(openai.InternalServerError) as down:
        sdk.client.chat.completions.create(model="tiny-llama", messages=MESSAGES)
    assert down.value.status_code == 503 and down.value.code == "inference_unavailable"
    assert down.value.response.headers["retry-after"] == "5"

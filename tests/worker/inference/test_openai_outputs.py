"""What OpenAI's chat parameters ask of the engine: n sequences per input, logprobs, JSON by
constrained decoding and tool calls, inside the continuous batch and streamed."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from app.storage import ArtifactStore
from tests.support.tool_template import copy_with_tool_template
from tests.worker.inference.artifacts import lm_spec
from worker.inference.loading import ModelSpec
from worker.inference.predictors import PredictionInputError
from worker.inference.service import InferenceService
from worker.inference.tools import ToolFormat, tool_format

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
        "confident": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["answer", "confident", "score", "tags"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["paris", "london"]},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}},
            "required": ["zone"],
        },
    },
}
CHAT = {"messages": [{"role": "user", "content": "what is the weather in paris?"}]}


@pytest.fixture(scope="module")
def service(store: ArtifactStore) -> InferenceService:
    return InferenceService(store, max_running=8)


@pytest.fixture(scope="module")
def base(llama_dir: Path) -> ModelSpec:
    return ModelSpec(**lm_spec(llama_dir, None, key="base:llama"))


@pytest.fixture(scope="module")
def tool_base(llama_dir: Path, models_root: Path) -> ModelSpec:
    target = models_root / "llama-tools"
    if not target.exists():
        copy_with_tool_template(llama_dir, target)
        # the tools' signatures make prompts of ~600 tokens in the tiny 400-token vocabulary;
        # rotary positions let the same weights take a longer context
        config = json.loads((target / "config.json").read_text())
        config["max_position_embeddings"] = 1024
        (target / "config.json").write_text(json.dumps(config))
    return ModelSpec(**lm_spec(target, None, key="base:llama-tools"))


def predict(
    service: InferenceService, spec: ModelSpec, item: Any, **parameters: Any
) -> list[dict[str, Any]]:
    return [dict(p) for p in service.predict(spec, [item], parameters)]


def stream(
    service: InferenceService, spec: ModelSpec, item: Any, **parameters: Any
) -> list[dict[str, Any]]:
    events: list[Any] = []
    ended = threading.Event()

    def emit(event: Any) -> None:
        events.append(event)
        if event is None:
            ended.set()

    service.open_stream(spec, item, parameters, emit)
    assert ended.wait(60)
    assert events.pop() is None and not any(isinstance(e, BaseException) for e in events)
    return events


# -- logprobs -----------------------------------------------------------------------------


def test_logprobs_are_the_bare_forwards_and_top_k_sums_to_at_most_one(
    service: InferenceService, base: ModelSpec, llama_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (result,) = predict(
        service,
        base,
        "hello world",
        temperature=0,
        max_new_tokens=8,
        logprobs=True,
        top_logprobs=5,
    )
    items = result["logprobs"]
    assert len(items) == result["completion_tokens"] > 0
    assert "".join(i["token"] for i in items) == result["text"]

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ids = tokenizer("hello world")["input_ids"]
    for item in items:
        with torch.inference_mode():
            bare = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        chosen = int(bare.argmax())  # greedy: the bare forward's best token
        assert item["token"] == tokenizer.decode([chosen])
        assert item["logprob"] == pytest.approx(float(bare[chosen]), abs=1e-4)
        assert item["bytes"] == list(item["token"].encode())
        top = item["top_logprobs"]
        assert len(top) == 5 and top[0]["logprob"] == pytest.approx(item["logprob"])
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
        ids.append(chosen)


def test_sampled_rows_report_the_model_distribution_not_the_tempered_one(
    service: InferenceService, base: ModelSpec
) -> None:
    (hot,) = predict(
        service, base, "the movie was", temperature=1.5, seed=3, max_new_tokens=6, logprobs=True
    )
    assert all(i["top_logprobs"] == [] and i["logprob"] <= 0 for i in hot["logprobs"])
    (plain,) = predict(service, base, "the movie was", temperature=1.5, seed=3, max_new_tokens=6)
    assert "logprobs" not in plain and plain["text"] == hot["text"]


def test_top_logprobs_needs_logprobs_and_a_known_parameter_is_checked(
    service: InferenceService, base: ModelSpec
) -> None:
    from pydantic import ValidationError

    from worker.inference.schemas import Parameters

    with pytest.raises(ValidationError, match="top_logprobs needs logprobs"):
        Parameters(top_logprobs=2)
    with pytest.raises(ValidationError):
        Parameters(top_logprobs=21, logprobs=True)


# -- n ------------------------------------------------------------------------------------


def test_n_gives_distinct_seeded_samples_that_repeat_with_the_seed(
    service: InferenceService, base: ModelSpec
) -> None:
    options = {"temperature": 1.0, "seed": 11, "max_new_tokens": 12}
    first = predict(service, base, "hello world", n=3, **options)
    assert len(first) == 3
    assert len({r["text"] for r in first}) == 3
    assert predict(service, base, "hello world", n=3, **options) == first
    # the first sequence is the one a request with n=1 gets
    assert predict(service, base, "hello world", **options) == first[:1]
    other = predict(service, base, "hello world", n=3, **{**options, "seed": 12})
    assert [r["text"] for r in other] != [r["text"] for r in first]


def test_a_stream_with_n_and_logprobs_adds_up_to_the_unstreamed_answer(
    service: InferenceService, base: ModelSpec
) -> None:
    options = {
        "temperature": 0.9,
        "seed": 5,
        "max_new_tokens": 10,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
        "stop": "o",
    }
    whole = predict(service, base, "numbers 0 1 2", **options)
    *deltas, closing = stream(service, base, "numbers 0 1 2", **options)
    for index, result in enumerate(whole):
        mine = [d for d in deltas if d["index"] == index]
        assert "".join(d["text"] for d in mine) == result["text"]
        assert [i for d in mine for i in d["logprobs"]] == result["logprobs"]
    assert [c["finish_reason"] for c in closing["choices"]] == [r["finish_reason"] for r in whole]
    assert closing["completion_tokens"] == sum(r["completion_tokens"] for r in whole)


# -- response_format ------------------------------------------------------------------------


def test_an_untrained_model_writes_schema_valid_json_greedy_and_sampled(
    service: InferenceService, base: ModelSpec
) -> None:
    greedy = predict(
        service, base, "hello world", temperature=0, max_new_tokens=120, response_format=JSON_SCHEMA
    )
    sampled = predict(
        service,
        base,
        "hello world",
        temperature=1.0,
        seed=2,
        n=3,
        max_new_tokens=120,
        response_format=JSON_SCHEMA,
    )
    for result in [*greedy, *sampled]:
        assert result["finish_reason"] == "stop", result
        jsonschema.validate(json.loads(result["text"]), SCHEMA)
    # unconstrained, the same model writes no JSON at all
    (free,) = predict(service, base, "hello world", temperature=0, max_new_tokens=30)
    with pytest.raises(ValueError):
        json.loads(free["text"])


def test_json_object_mode_and_a_constrained_stream(
    service: InferenceService, base: ModelSpec
) -> None:
    results = predict(
        service,
        base,
        "the movie was",
        temperature=1.0,
        seed=1,
        n=6,
        max_new_tokens=100,
        response_format={"type": "json_object"},
    )
    # JSON mode bounds no string, so an untrained model may ramble in one until max_tokens;
    # whatever ends by itself is a JSON object, and what does not is the start of one
    assert any(r["finish_reason"] == "stop" for r in results)
    for result in results:
        if result["finish_reason"] == "stop":
            assert isinstance(json.loads(result["text"]), dict)
        else:
            assert result["text"].startswith("{")
    *deltas, closing = stream(
        service, base, "hello world", temperature=0, max_new_tokens=120, response_format=JSON_SCHEMA
    )
    jsonschema.validate(json.loads("".join(d["text"] for d in deltas)), SCHEMA)
    assert closing["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "object", "not": {"required": ["a"]}}, "schema.not"),
        ({"properties": {"a": {"type": "integer", "multipleOf": 3}}}, "properties.a.multipleOf"),
        ({"type": "string", "format": "credit-card"}, "schema.format"),
        ({"$ref": "#/$defs/missing"}, "schema"),
    ],
)
def test_a_schema_that_cannot_be_enforced_is_refused_before_decoding(
    service: InferenceService, base: ModelSpec, schema: dict[str, Any], where: str
) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(PredictionInputError) as caught:
        predict(service, base, "hello", response_format=response_format)
    assert caught.value.param.startswith("parameters.response_format.json_schema.schema")
    assert caught.value.param.endswith(where.split(".")[-1]) or where == "schema"
    assert caught.value.code == "unsupported_schema"


# -- tools --------------------------------------------------------------------------------


def test_a_required_tool_call_is_parsed_into_tool_calls(
    service: InferenceService, tool_base: ModelSpec
) -> None:
    item = {**CHAT, "tools": [WEATHER, TIME], "tool_choice": "required"}
    for result in predict(
        service, tool_base, item, temperature=1.0, seed=4, n=3, max_new_tokens=200
    ):
        assert result["finish_reason"] == "tool_calls" and result["text"] == ""
        (call,) = result["tool_calls"]
        arguments = json.loads(call["arguments"])
        tool = WEATHER if call["name"] == "get_weather" else TIME
        assert call["name"] in ("get_weather", "get_time")
        jsonschema.validate(arguments, tool["function"]["parameters"])


def test_a_named_tool_choice_calls_that_function_also_when_streamed(
    service: InferenceService, tool_base: ModelSpec
) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    item = {**CHAT, "tools": [WEATHER, TIME], "tool_choice": named}
    (result,) = predict(service, tool_base, item, temperature=0, max_new_tokens=200)
    assert [c["name"] for c in result["tool_calls"]] == ["get_time"]
    *deltas, closing = stream(service, tool_base, item, temperature=0, max_new_tokens=200)
    assert "".join(d["text"] for d in deltas) == ""  # the call is never streamed as text
    assert closing["finish_reason"] == "tool_calls"
    assert closing["tool_calls"] == result["tool_calls"]


def test_tools_on_a_template_without_tool_support_are_refused(
    service: InferenceService, base: ModelSpec
) -> None:
    with pytest.raises(PredictionInputError, match="does not render tools") as caught:
        predict(service, base, {**CHAT, "tools": [WEATHER]})
    assert caught.value.code == "tools_unsupported"


def test_auto_tool_choice_renders_the_tools_into_the_prompt(
    service: InferenceService, tool_base: ModelSpec
) -> None:
    (plain,) = predict(service, tool_base, CHAT, temperature=0, max_new_tokens=2)
    (auto,) = predict(service, tool_base, {**CHAT, "tools": [WEATHER]}, max_new_tokens=2)
    (none,) = predict(
        service, tool_base, {**CHAT, "tools": [WEATHER], "tool_choice": "none"}, max_new_tokens=2
    )
    assert auto["prompt_tokens"] > plain["prompt_tokens"] == none["prompt_tokens"]


HERMES = ToolFormat("hermes", ("get_weather", "get_time"))
LLAMA3 = ToolFormat("llama3_json", ("get_weather",))


def test_hermes_calls_are_parsed_with_the_content_before_them() -> None:
    text = (
        'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n'
        '</tool_call><tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"utc\\"}"}'
        "</tool_call>"
    )
    content, calls = HERMES.parse(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "paris"}),
        ("get_time", {"zone": "utc"}),
    ]
    # a call that is not JSON, or names no offered tool, leaves the reply as text
    for bad in ["<tool_call>{not json}</tool_call>", '<tool_call>{"name": "rm"}</tool_call>']:
        assert HERMES.parse(bad) == (bad, [])
    assert HERMES.streamable("Let me check. <tool_") == len("Let me check. ")
    assert HERMES.streamable("Let me check. <tool_call>{") == len("Let me check. ")
    assert HERMES.streamable("plain text") == len("plain text")


def test_llama3_json_calls_are_parsed() -> None:
    one = '{"name": "get_weather", "parameters": {"city": "london"}}'
    content, calls = LLAMA3.parse(one)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "london"})
    ]
    assert len(LLAMA3.parse(f"{one}; {one}")[1]) == 2
    assert LLAMA3.parse("It is sunny.") == ("It is sunny.", [])
    assert LLAMA3.streamable(' {"name"') == 0 and LLAMA3.streamable("Sunny") == 5


def test_the_family_is_read_off_the_template() -> None:
    tools = [WEATHER]
    assert tool_format("{{ tools }} <tool_call>", tools, 0).family == "hermes"
    assert tool_format("{{ tools }} <|python_tag|> ipython", tools, 0).family == "llama3_json"
    with pytest.raises(PredictionInputError, match="Hermes/Qwen"):
        tool_format("{{ tools }} [TOOL_CALLS]", tools, 0)


def test_the_mask_touches_only_constrained_rows_and_leaves_what_the_grammar_allows(
    llama_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    from worker.inference.constrained import RowConstraint, grammars_for, mask

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    vocab = len(tokenizer)
    grammars = grammars_for(tokenizer, vocab, [tokenizer.eos_token_id])
    row = RowConstraint(grammars.response_format(JSON_SCHEMA))
    logits = torch.randn(3, vocab)
    masked = mask(logits, [None, row, None])
    assert torch.equal(masked[0], logits[0]) and torch.equal(masked[2], logits[2])
    allowed = (masked[1] > float("-inf")).nonzero().flatten().tolist()
    assert allowed and all(str(tokenizer.decode([t])).startswith("{") for t in allowed)
    assert torch.equal(masked[1, allowed], logits[1, allowed])
    assert mask(logits, [None, None, None]) is logits


def test_the_n_sequences_of_an_input_share_one_prefill(
    service: InferenceService, base: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.inference import scheduler

    widths: list[int] = []
    real = scheduler.prefill

    def counted(module: Any, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        widths.append(len(prompts))
        return real(module, prompts, *args, **kwargs)

    options = {"temperature": 1.0, "seed": 21, "max_new_tokens": 6}
    before = predict(service, base, "hello world", n=4, **options)
    monkeypatch.setattr(scheduler, "prefill", counted)
    shared = service.predict(base, ["hello world", "the movie was"], {**options, "n": 4})
    assert widths == [2]  # two inputs, eight sequences
    assert [dict(r) for r in shared[:4]] == before


LLAMA3_STYLE_TEMPLATE = (
    "{% if tools %}<|system|>\nEnvironment: ipython\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    'Reply with a call as {"name": <name>, "parameters": <JSON object>}{{ eos_token }}\n'
    "{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_a_llama3_style_template_gets_json_calls_forced_and_parsed(
    service: InferenceService, tool_base: ModelSpec, models_root: Path
) -> None:
    from transformers import AutoTokenizer

    target = models_root / "llama3-tools"
    if not target.exists():
        import shutil

        shutil.copytree(tool_base.base_model_dir, target)
        tokenizer = AutoTokenizer.from_pretrained(target)
        tokenizer.chat_template = LLAMA3_STYLE_TEMPLATE
        tokenizer.save_pretrained(target)
    spec = ModelSpec(**lm_spec(target, None, key="base:llama3-tools"))
    item = {**CHAT, "tools": [WEATHER], "tool_choice": "required"}
    (result,) = predict(service, spec, item, temperature=0, max_new_tokens=120)
    assert result["finish_reason"] == "tool_calls" and result["text"] == ""
    (call,) = result["tool_calls"]
    assert call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])
    *deltas, closing = stream(service, spec, item, temperature=0, max_new_tokens=120)
    assert "".join(d["text"] for d in deltas) == "" and closing["tool_calls"] == [call]

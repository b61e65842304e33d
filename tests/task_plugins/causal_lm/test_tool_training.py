"""Tool-calling chats rendered through the base model's own template (with `tools`), the
loss on assistant turns and their tool calls, none on weight-0 turns; a template without
tool support is refused before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.failures import Failure
from task_plugins.causal_lm.chat_render import check_tool_template, render_chat
from task_plugins.causal_lm.chat_tools import normalize_tool_row
from task_plugins.causal_lm.training import encode_causal
from tests.support import openai_examples
from tests.support.models import CHAT_TEMPLATE
from tests.support.tool_template import TOOL_CHAT_TEMPLATE
from worker.training.metrics import IGNORE_INDEX


@pytest.fixture(scope="module")
def tool_tokenizer(tiny_llama: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_llama: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    return tokenizer


def row(line: str) -> dict[str, Any]:
    return normalize_tool_row(json.loads(line))


def expected_labels(
    tokenizer: PreTrainedTokenizerBase, text: str, learned: list[str]
) -> tuple[list[int], list[int]]:
    """Token ids of `text` and, token by token, the label each should have: the token where
    it lies inside one of the `learned` pieces (found in order), IGNORE_INDEX elsewhere."""
    spans, cursor = [], 0
    for piece in learned:
        start = text.index(piece, cursor)
        spans.append((start, start + len(piece)))
        cursor = start + len(piece)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(s <= start and end <= e for s, e in spans) else IGNORE_INDEX
        for token, (start, end) in zip(
            encoding["input_ids"], encoding["offset_mapping"], strict=True
        )
    ]
    return list(encoding["input_ids"]), labels


def test_tool_calls_and_answers_render_with_the_templates_tools(
    tool_tokenizer: PreTrainedTokenizerBase,
) -> None:
    example = row(openai_examples.TOOL_CALL)
    text = render_chat(tool_tokenizer, example["messages"], example["tools"])
    # the tool's schema is in the system turn, as the template lays it out
    assert json.dumps(example["tools"][0]) in text
    assert (
        '<|assistant|>\n<tool_call>{"name": "get_current_weather", "arguments": '
        '{"location": "San Francisco, USA", "format": "celsius"}}</tool_call></s>\n'
    ) in text
    # the older functions/function_call form renders the same chat
    legacy = row(openai_examples.FUNCTION_CALL)
    assert render_chat(tool_tokenizer, legacy["messages"], legacy["tools"]) == text


def test_loss_on_tool_calls_and_replies_token_by_token(
    tool_tokenizer: PreTrainedTokenizerBase,
) -> None:
    example = row(openai_examples.TOOL_RESPONSE)
    features = encode_causal([example], tool_tokenizer, max_length=512).features[0]
    text = render_chat(tool_tokenizer, example["messages"], example.get("tools"))
    call = (
        '<tool_call>{"name": "get_current_weather", "arguments": {"location": "San Francisco, '
        'USA", "format": "celsius"}}</tool_call></s>\n'
    )
    reply = "It is 21 degrees celsius in San Francisco, CA</s>\n"
    input_ids, labels = expected_labels(tool_tokenizer, text, [call, reply])
    assert features["input_ids"] == input_ids
    assert features["labels"] == labels
    # the user turn, the tool's answer and the role headers carry no loss
    learned = tool_tokenizer.decode([t for t in features["labels"] if t != IGNORE_INDEX])
    assert learned == call + reply
    assert "21.0" not in learned and "<|tool|>" not in learned


def test_tool_definitions_carry_no_loss(tool_tokenizer: PreTrainedTokenizerBase) -> None:
    example = row(openai_examples.TOOL_CALL)
    features = encode_causal([example], tool_tokenizer, max_length=1024).features[0]
    text = render_chat(tool_tokenizer, example["messages"], example["tools"])
    call = text[text.rindex("<tool_call>{") :]  # the system turn shows the syntax too
    assert features["labels"] == expected_labels(tool_tokenizer, text, [call])[1]


# A layout like several model families': tools in the system turn, and consecutive tool
# results grouped into one user turn (a chat ending on the first result is then not a prefix
# of the whole chat).
GROUPED_TEMPLATE = (
    "{% if tools %}[system]{% for tool in tools %}{{ tool['function']['name'] }};{% endfor %}"
    "[/]\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}[user]{% endif %}"
    "<result>{{ message['content'] }}</result>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}[/]\n{% endif %}"
    "{% else %}[{{ message['role'] }}]{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "<call>{{ call['function']['name'] }} {{ call['function']['arguments'] | tojson }}</call>"
    "{% endfor %}[/]\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_parallel_calls_with_grouped_results_token_by_token(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = GROUPED_TEMPLATE
    weather = json.loads(openai_examples.TOOL_CALL)["tools"][0]
    call = weather["function"]["name"]
    example = normalize_tool_row(
        {
            "messages": [
                {"role": "user", "content": "Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": f"c{i}",
                            "type": "function",
                            "function": {"name": call, "arguments": json.dumps({"location": city})},
                        }
                        for i, city in enumerate(("Paris", "Rome"))
                    ],
                },
                {"role": "tool", "tool_call_id": "c0", "content": "18"},
                {"role": "tool", "tool_call_id": "c1", "content": "24"},
                {"role": "assistant", "content": "18 and 24.", "weight": 1},
            ],
            "tools": [weather],
        }
    )
    check_tool_template(tokenizer, [example], "grouped")
    features = encode_causal([example], tokenizer, max_length=512).features[0]
    text = render_chat(tokenizer, example["messages"], example["tools"])
    assert "[user]<result>18</result><result>24</result>[/]\n" in text
    calls = (
        'Checking.<call>get_current_weather {"location": "Paris"}</call>'
        '<call>get_current_weather {"location": "Rome"}</call>[/]\n'
    )
    input_ids, labels = expected_labels(tokenizer, text, [calls, "18 and 24.[/]\n"])
    assert features["input_ids"] == input_ids
    assert features["labels"] == labels


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_weight_zero_turns_carry_no_loss_token_by_token(
    tool_tokenizer: PreTrainedTokenizerBase, train_on_inputs: bool
) -> None:
    example = row(openai_examples.WEIGHTS[0])
    features = encode_causal(
        [example], tool_tokenizer, max_length=512, train_on_inputs=train_on_inputs
    ).features[0]
    text = render_chat(tool_tokenizer, example["messages"])
    skipped = "Paris</s>\n"
    kept = "Paris, as if everyone doesn't know that already.</s>\n"
    if train_on_inputs:
        # every token but the weight-0 turn's
        before, after = text.split(skipped, 1)
        learned = [before, after]
    else:
        learned = [kept]
    input_ids, labels = expected_labels(tool_tokenizer, text, learned)
    assert features["input_ids"] == input_ids
    assert features["labels"] == labels
    trained = tool_tokenizer.decode([t for t in features["labels"] if t != IGNORE_INDEX])
    assert ("<|assistant|>\nParis</s>" in trained) is False


def test_weight_zero_with_the_plain_template(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    example = row(openai_examples.WEIGHTS[1])
    check_tool_template(plain_tokenizer, [example], "tiny-llama")  # no tools: no problem
    features = encode_causal([example], plain_tokenizer, max_length=512).features[0]
    trained = plain_tokenizer.decode([t for t in features["labels"] if t != IGNORE_INDEX])
    assert trained == "Oh, just some guy named William Shakespeare. Ever heard of him?</s>\n"


@pytest.mark.parametrize(
    ("line", "missing"),
    [
        (openai_examples.TOOL_CALL, "leaves out the tool definitions (`tools`)"),
        # `tools: []` (as the docs write it): the calls are what the template must show
        (openai_examples.TOOL_RESPONSE, "leaves out the assistant's tool_calls"),
    ],
)
def test_a_template_without_tool_support_is_refused(
    plain_tokenizer: PreTrainedTokenizerBase, line: str, missing: str
) -> None:
    rows = [row(line), row(openai_examples.WEIGHTS[0]), row(line)]
    with pytest.raises(Failure) as failure:
        check_tool_template(plain_tokenizer, rows, "tiny-llama")
    assert failure.value.code == "unsupported_chat_template"
    assert failure.value.param == "model"
    assert failure.value.message.startswith(
        f"2 training rows use tool calling, but the chat template of tiny-llama {missing} "
        "(checked at job start, before training): choose a base model whose chat template "
        "takes `tools`"
    )


def test_a_template_that_refuses_tool_messages_is_refused(
    tiny_llama: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'tool' %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{% endfor %}"
        + TOOL_CHAT_TEMPLATE
    )
    with pytest.raises(Failure) as failure:
        check_tool_template(tokenizer, [row(openai_examples.TOOL_RESPONSE)], "base")
    assert "fails on a chat with tools: roles must alternate user/assistant" in (
        failure.value.message
    )
    # the same template is fine for rows that only call
    check_tool_template(tokenizer, [row(openai_examples.TOOL_CALL)], "base")


def test_a_row_the_template_refuses_fails_the_job_naming_the_reason(tiny_llama: Path) -> None:
    # Mistral's templates want call ids of nine letters and digits; OpenAI's docs use "call_id"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = (
        "{% for message in messages %}{% for call in message.get('tool_calls') or [] %}"
        "{% if call['id'] | length != 9 %}"
        "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
        "{% endif %}{% endfor %}{% endfor %}" + TOOL_CHAT_TEMPLATE
    )
    rows = [row(openai_examples.TOOL_CALL)]
    check_tool_template(tokenizer, rows, "mistral-like")  # the probe's id has nine
    with pytest.raises(Failure) as failure:
        encode_causal(rows, tokenizer, max_length=512)
    assert failure.value.code == "unsupported_chat_template"
    assert failure.value.param == "training_file"
    assert failure.value.message.startswith(
        "the base model's chat template refuses chat 1 of 1 (after the split into training and "
        "validation rows): Tool call IDs should be alphanumeric strings with length 9!"
    )


def test_exact_match_skips_tool_chats_and_weight_zero_references() -> None:
    from task_plugins.causal_lm.scoring import _prompted

    assert _prompted(row(openai_examples.TOOL_RESPONSE)) is None
    weighted = row(openai_examples.WEIGHTS[0])
    prompted = _prompted(weighted)
    assert prompted is not None
    assert prompted.reference == "Paris, as if everyone doesn't know that already."
    ends_unweighted = {"messages": [*weighted["messages"][:3]]}
    assert ends_unweighted["messages"][-1]["weight"] == 0
    assert _prompted(ends_unweighted) is None

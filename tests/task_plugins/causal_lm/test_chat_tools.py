"""Chat rows with tools, tool calls, tool messages and weights: OpenAI's documented examples
are accepted unmodified; every broken field is refused with its line and what to change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.files.formats import inspect_file, read_examples
from task_plugins.causal_lm.chat_tools import has_tools
from tests.support import openai_examples

PLAIN = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
USER = {"role": "user", "content": "weather in Paris?"}


def call(call_id: str = "c1", arguments: Any = '{"city": "Paris"}', name: str = "get_weather"):
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def calling(*calls: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": list(calls), **extra}


def answer(call_id: str = "c1", content: str = "18C") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


FINAL = {"role": "assistant", "content": "18C in Paris"}


def inspect_lines(tmp_path: Path, *lines: str):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    return inspect_file(path, "train.jsonl"), path


def test_openai_docs_examples_are_accepted_unmodified(tmp_path: Path) -> None:
    report, path = inspect_lines(tmp_path, *openai_examples.ALL_LINES)
    assert report.ok, report.errors
    assert report.format == "chat"
    assert report.stats["rows"] == len(openai_examples.ALL_LINES)
    # what the rows use, for the check of the base's template at job creation
    assert report.stats["features"] == {
        "tool_calls": 4,
        "tool_results": 2,
        "tools": 2,  # the answers' rows have "tools": [] / "functions": []
        "weight_0": 3,
    }
    fmt, rows = read_examples(path, "train.jsonl")
    assert fmt == "chat"
    tool_call, tool_response, function_call, function_response, weighted, *_ = rows
    # tools as transformers' templates take them; arguments parsed into an object
    assert tool_call["tools"][0]["function"]["name"] == "get_current_weather"
    assert tool_call["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_id",
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"location": "San Francisco, USA", "format": "celsius"},
                },
            }
        ],
    }
    assert tool_response["messages"][2] == {
        "role": "tool",
        "content": "21.0",
        "tool_call_id": "call_id",
        "name": "get_current_weather",
    }
    # the older functions / function_call / function role become tools
    assert function_call["tools"] == [
        {"type": "function", "function": json.loads(openai_examples.FUNCTION_CALL)["functions"][0]}
    ]
    assert function_call["messages"][1]["tool_calls"][0]["function"]["arguments"] == {
        "location": "San Francisco, USA",
        "format": "celsius",
    }
    # ... the legacy call gets an id (nine letters and digits) its answer refers to
    assert function_call["messages"][1]["tool_calls"][0]["id"] == "call00001"
    assert function_response["messages"][2] == {
        "role": "tool",
        "content": "21.0",
        "tool_call_id": "call00001",
        "name": "get_current_weather",
    }
    # weight 0 is kept for the trainer; weight 1 is the default and dropped
    assert [m.get("weight") for m in weighted["messages"]] == [None, None, 0, None, None]
    assert all(has_tools(row) for row in rows[:4])
    assert not any(has_tools(row) for row in rows[4:])


def test_a_plain_row_normalizes_as_before(tmp_path: Path) -> None:
    report, path = inspect_lines(tmp_path, json.dumps(PLAIN))
    assert report.ok
    assert read_examples(path, "train.jsonl") == ("chat", [PLAIN])


def test_a_developer_message_is_read_as_system(tmp_path: Path) -> None:
    developer = {"messages": [{"role": "developer", "content": "be brief"}, *PLAIN["messages"]]}
    report, path = inspect_lines(tmp_path, json.dumps(developer))
    assert report.ok, report.errors
    rows = read_examples(path, "train.jsonl")[1]
    assert rows == [{"messages": [{"role": "system", "content": "be brief"}, *PLAIN["messages"]]}]


def test_tool_rows_count_their_definitions_and_calls_in_the_size_estimate(
    tmp_path: Path,
) -> None:
    report, _ = inspect_lines(tmp_path, openai_examples.TOOL_CALL)
    row = json.loads(openai_examples.TOOL_CALL)
    tools = len(json.dumps(row["tools"][0]))
    arguments = row["messages"][1]["tool_calls"][0]["function"]["arguments"]
    expected = len("What is the weather in San Francisco?") + tools
    expected += len("get_current_weather") + len(arguments)
    assert report.stats["total_chars"] == expected


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        # row-level tools
        (
            {**PLAIN, "tools": WEATHER},
            "'tools' must be a list, got an object",
        ),
        (
            {**PLAIN, "tools": [{"type": "retrieval"}]},
            "tools[0].type must be 'function', got \"retrieval\"",
        ),
        ({**PLAIN, "tools": [{"type": "function"}]}, "tools[0] has no 'function'"),
        (
            {**PLAIN, "tools": [{"type": "function", "function": {"name": "get weather"}}]},
            "tools[0].function.name must be 1 to 64 letters, digits, '_' or '-', got "
            '"get weather"',
        ),
        (
            {**PLAIN, "tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]},
            "tools[0].function.parameters must be a JSON schema object, got a number",
        ),
        (
            {**PLAIN, "tools": [{"type": "function", "function": {"name": "f", "args": {}}}]},
            "tools[0].function has unknown key(s) args",
        ),
        ({**PLAIN, "tools": [WEATHER, WEATHER]}, "get_weather are declared more than once"),
        ({**PLAIN, "functions": [{"description": "x"}]}, "functions[0] has no 'name'"),
        (
            {**PLAIN, "tools": [WEATHER], "functions": [WEATHER["function"]]},
            "the row has both 'tools' and 'functions'",
        ),
        ({**PLAIN, "parallel_tool_calls": "no"}, "'parallel_tool_calls' must be true or false"),
        ({**PLAIN, "tool_choice": "auto"}, "unexpected key(s) tool_choice"),
        (
            {"messages": [USER, calling(call(), call("c2"))], "parallel_tool_calls": False},
            "messages[1] makes 2 tool calls but the row sets parallel_tool_calls to false",
        ),
        # tool calls
        (
            {"messages": [USER, calling(call(arguments={"city": "Paris"}))]},
            "messages[1].tool_calls[0].function.arguments must be a string holding JSON (as "
            'OpenAI sends them), got an object: write it as "{\\"city\\": \\"Paris\\"}"',
        ),
        (
            {"messages": [USER, calling(call(arguments="{city: Paris}"))]},
            "messages[1].tool_calls[0].function.arguments is not valid JSON: Expecting property "
            "name enclosed in double quotes",
        ),
        (
            {"messages": [USER, calling(call(arguments="[1, 2]"))]},
            "messages[1].tool_calls[0].function.arguments must be a JSON object, got a list",
        ),
        (
            {"messages": [USER, calling(call(call_id=""))]},
            "messages[1].tool_calls[0].id must be a non-empty string",
        ),
        (
            {"messages": [USER, calling(call(), call())]},
            'messages[1].tool_calls[1].id "c1" is used by an earlier tool call of the row',
        ),
        (
            {"messages": [USER, calling({"id": "c1", "type": "function"})]},
            "messages[1].tool_calls[0] has no 'function'",
        ),
        (
            {"messages": [USER, calling(call(name="no spaces allowed"))]},
            "messages[1].tool_calls[0].function.name must be 1 to 64 letters",
        ),
        (
            {"messages": [{**USER, "tool_calls": [call()]}, FINAL]},
            "messages[0].tool_calls is only allowed on assistant messages",
        ),
        (
            {
                "messages": [
                    USER,
                    calling(call(), function_call={"name": "f", "arguments": "{}"}),
                ]
            },
            "messages[1] has both tool_calls and function_call",
        ),
        (
            {"messages": [USER, {"role": "assistant", "function_call": {"name": "f"}}]},
            "messages[1].function_call has no 'arguments'",
        ),
        ({"messages": [USER, {"role": "assistant"}]}, "messages[1] has no 'content'"),
        # pairing calls with tool messages
        (
            {"messages": [USER, calling(call()), answer("c2"), FINAL]},
            'messages[2].tool_call_id "c2" matches no earlier tool call (the row\'s call ids: c1)',
        ),
        (
            {"messages": [USER, calling(call()), answer(), answer(), FINAL]},
            'messages[3].tool_call_id "c1" answers a call that was already answered',
        ),
        (
            {"messages": [USER, calling(call(), call("c2")), answer(), FINAL]},
            'messages[3] comes before tool call(s) "c2" of messages[1] got an answer',
        ),
        (
            {"messages": [USER, calling(call()), {"role": "tool", "content": "18C"}, FINAL]},
            "messages[2] (role 'tool') needs 'tool_call_id'",
        ),
        (
            {"messages": [USER, {**FINAL, "tool_call_id": "c1"}]},
            "messages[1].tool_call_id is only allowed on tool messages",
        ),
        (
            {"messages": [USER, calling(call()), answer(content=""), FINAL]},
            "messages[2].content is empty",
        ),
        (
            {"messages": [USER, {"role": "function", "name": "f", "content": "1"}, FINAL]},
            "messages[1] (role 'function') answers no function_call",
        ),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                    {"role": "function", "content": "1"},
                    FINAL,
                ]
            },
            "messages[2] (role 'function') needs 'name'",
        ),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                    {"role": "function", "name": "f", "content": "1"},
                    {"role": "function", "name": "f", "content": "2"},
                    FINAL,
                ]
            },
            "messages[3] (role 'function') answers no function_call",
        ),
        # weights
        (
            {"messages": [USER, {**FINAL, "weight": 0.5}]},
            "messages[1].weight must be 0 or 1, got 0.5",
        ),
        (
            {"messages": [{**USER, "weight": 0}, FINAL]},
            "messages[0].weight is only allowed on assistant messages",
        ),
        (
            {"messages": [USER, calling(call()), answer(), answer("c1", "x") | {"weight": 1}]},
            "messages[3].weight is only allowed on assistant messages",
        ),
        (
            {"messages": [USER, {**FINAL, "weight": 0}, USER, {**FINAL, "weight": 0}]},
            "every assistant message has weight 0: nothing to learn from",
        ),
    ],
)
def test_tool_and_weight_errors_name_the_line_and_the_field(
    tmp_path: Path, row: dict[str, Any], fragment: str
) -> None:
    report, _ = inspect_lines(
        tmp_path, openai_examples.TOOL_CALL, openai_examples.WEIGHTS[0], json.dumps(row)
    )
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    assert report.errors[0]["line"] == 3
    assert fragment in report.errors[0]["message"], report.errors[0]["message"]


def test_a_row_may_end_on_its_tool_calls_and_answer_them_in_any_order(tmp_path: Path) -> None:
    rows = [
        {"messages": [USER, calling(call(), call("c2"))], "tools": [WEATHER]},
        {
            "messages": [USER, calling(call(), call("c2")), answer("c2"), answer(), FINAL],
            "tools": [WEATHER],
            "parallel_tool_calls": True,
        },
        # content next to the calls, and a null content, are both fine
        {"messages": [USER, calling(call(), content="let me look"), answer(), FINAL]},
        {"messages": [USER, calling(call(), content=None), answer(), FINAL]},
    ]
    report, _ = inspect_lines(tmp_path, *(json.dumps(row) for row in rows))
    assert report.ok, report.errors

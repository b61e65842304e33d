"""OpenAI's tool calling in chat training rows: the checks and the form training renders.

A chat row may carry `tools` (or the older `functions`) and `parallel_tool_calls`; an
assistant message may carry `tool_calls` (or the older `function_call`) instead of, or as
well as, its content; `tool` (or `function`) messages answer the calls. The checks follow
OpenAI's documented format and its chat API's rules: each call has an id (unique in the
row) and `arguments` that are a JSON string of an object; each `tool` message answers an
earlier call by its `tool_call_id`, once; the calls of an assistant message are all answered
before the conversation goes on (a row may end on the calls: that teaches the call).

`normalize_tool_row` turns a row into what transformers' `apply_chat_template` takes:
`tools` as JSON schemas (`{"type": "function", "function": {...}}`), assistant `tool_calls`
with `arguments` parsed into an object, `tool` messages with their `tool_call_id` and the
function's `name`. The legacy forms become the current ones.
"""

from __future__ import annotations

import json
import re
from typing import Any

from task_plugins.base import Row
from task_plugins.rows import json_type

# OpenAI's rule for function names
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_ROW_KEYS = ("tools", "functions", "parallel_tool_calls")
TOOL_ROLES = ("tool", "function")
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
_CALL_FUNCTION_KEYS = frozenset({"name", "arguments"})
# the roles chat templates know, for OpenAI's other names
_ROLE_AS = {"function": "tool", "developer": "system"}


def check_row_tools(row: Row) -> str | None:
    """The row-level keys: `tools` or `functions` (not both), `parallel_tool_calls`."""
    if "tools" in row and "functions" in row:
        return "the row has both 'tools' and 'functions': use 'tools' ('functions' is its old form)"
    if "tools" in row:
        problem = _check_list(row["tools"], "tools", _check_tool)
        if problem:
            return problem
    if "functions" in row:
        problem = _check_list(row["functions"], "functions", _check_function)
        if problem:
            return problem
    if "parallel_tool_calls" in row and not isinstance(row["parallel_tool_calls"], bool):
        return (
            "'parallel_tool_calls' must be true or false, "
            f"got {json_type(row['parallel_tool_calls'])}"
        )
    names = [_declared_name(item) for item in row.get("tools") or row.get("functions") or []]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"the tool(s) {', '.join(repeated)} are declared more than once: keep one of each"
    return None


def _check_list(value: Any, key: str, check: Any) -> str | None:
    if not isinstance(value, list):
        return f"'{key}' must be a list, got {json_type(value)}"
    for index, item in enumerate(value):
        problem: str | None = check(item, f"{key}[{index}]")
        if problem:
            return problem
    return None


def _check_tool(tool: Any, where: str) -> str | None:
    if not isinstance(tool, dict):
        return f'{where} must be an object {{"type": "function", "function": {{...}}}}'
    if tool.get("type") != "function":
        return f"{where}.type must be 'function', got {json.dumps(tool.get('type'))}"
    unknown = set(tool) - {"type", "function"}
    if unknown:
        return f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a tool has type, function"
    if "function" not in tool:
        return f"{where} has no 'function'"
    return _check_function(tool["function"], f"{where}.function")


def _check_function(function: Any, where: str) -> str | None:
    if not isinstance(function, dict):
        return f"{where} must be an object with 'name' (and 'description', 'parameters')"
    unknown = set(function) - _FUNCTION_KEYS
    if unknown:
        return (
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a function may only have "
            f"{', '.join(sorted(_FUNCTION_KEYS))}"
        )
    problem = _check_name(function, where)
    if problem:
        return problem
    if "description" in function and not isinstance(function["description"], str):
        return f"{where}.description must be a string, got {json_type(function['description'])}"
    if "parameters" in function and not isinstance(function["parameters"], dict):
        return (
            f"{where}.parameters must be a JSON schema object, "
            f"got {json_type(function['parameters'])}"
        )
    if "strict" in function and not isinstance(function["strict"], bool):
        return f"{where}.strict must be true or false, got {json_type(function['strict'])}"
    return None


def _check_name(function: dict[str, Any], where: str) -> str | None:
    if "name" not in function:
        return f"{where} has no 'name'"
    name = function["name"]
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        shown = json.dumps(name) if isinstance(name, str) else json_type(name)
        return f"{where}.name must be 1 to 64 letters, digits, '_' or '-', got {shown}"
    return None


def _declared_name(item: Any) -> str:
    function = item.get("function", item)
    return str(function["name"])


def check_tool_calls(message: dict[str, Any], where: str, seen_ids: set[str]) -> str | None:
    """An assistant message's `tool_calls` or `function_call` (ids are added to `seen_ids`)."""
    if "tool_calls" in message and "function_call" in message:
        return (
            f"{where} has both tool_calls and function_call: use tool_calls "
            "(function_call is its old form)"
        )
    if "function_call" in message:
        return _check_call_function(message["function_call"], f"{where}.function_call")
    calls = message["tool_calls"]
    if not isinstance(calls, list) or not calls:
        return f"{where}.tool_calls must be a non-empty list, got {json_type(calls)}"
    for index, call in enumerate(calls):
        here = f"{where}.tool_calls[{index}]"
        if not isinstance(call, dict):
            return f'{here} must be an object {{"id", "type": "function", "function"}}'
        unknown = set(call) - _TOOL_CALL_KEYS
        if unknown:
            return (
                f"{here} has unknown key(s) {', '.join(sorted(unknown))}; a tool call has "
                "id, type, function"
            )
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            return f"{here}.id must be a non-empty string, got {json_type(call_id)}"
        if call_id in seen_ids:
            return f"{here}.id {json.dumps(call_id)} is used by an earlier tool call of the row"
        seen_ids.add(call_id)
        if call.get("type", "function") != "function":
            return f"{here}.type must be 'function', got {json.dumps(call.get('type'))}"
        if "function" not in call:
            return f"{here} has no 'function'"
        problem = _check_call_function(call["function"], f"{here}.function")
        if problem:
            return problem
    return None


def _check_call_function(function: Any, where: str) -> str | None:
    if not isinstance(function, dict):
        return f"{where} must be an object with 'name' and 'arguments'"
    unknown = set(function) - _CALL_FUNCTION_KEYS
    if unknown:
        return f"{where} has unknown key(s) {', '.join(sorted(unknown))}; it has name, arguments"
    problem = _check_name(function, where)
    if problem:
        return problem
    if "arguments" not in function:
        return f"{where} has no 'arguments'"
    arguments = function["arguments"]
    if not isinstance(arguments, str):
        return (
            f"{where}.arguments must be a string holding JSON (as OpenAI sends them), got "
            f"{json_type(arguments)}: write it as {json.dumps(json.dumps(arguments))}"
            if isinstance(arguments, dict)
            else f"{where}.arguments must be a string holding a JSON object, got "
            f"{json_type(arguments)}"
        )
    try:
        parsed = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
        return f"{where}.arguments is not valid JSON: {detail}"
    if not isinstance(parsed, dict):
        return f"{where}.arguments must be a JSON object, got {json_type(parsed)}"
    return None


class CallLedger:
    """The tool calls of a row in order, to pair them with the messages that answer them."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.names: dict[str, str] = {}
        # the calls of the last assistant message not yet answered, in order
        self.open: list[str] = []
        self.open_where = ""
        self.open_function = False

    def called(self, message: dict[str, Any], where: str) -> None:
        self.open_where = where
        if "function_call" in message:
            self.open, self.open_function = ["function_call"], True
            return
        self.open_function = False
        self.open = [str(call["id"]) for call in message["tool_calls"]]
        for call in message["tool_calls"]:
            self.names[str(call["id"])] = str(call["function"]["name"])

    def answer(self, message: dict[str, Any], where: str) -> str | None:
        """The problem of a `tool`/`function` message, or None (the call is then closed)."""
        if message["role"] == "function":
            if not self.open_function:
                return (
                    f"{where} (role 'function') answers no function_call: put it right after "
                    "the assistant message whose function_call it answers"
                )
            self.open, self.open_function = [], False
            return None
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            return f"{where} (role 'tool') needs 'tool_call_id': the id of the call it answers"
        if call_id in self.open:
            self.open.remove(call_id)
            return None
        if call_id in self.ids:
            return (
                f"{where}.tool_call_id {json.dumps(call_id)} answers a call that was already "
                "answered, or one of an earlier assistant turn"
            )
        known = ", ".join(sorted(self.ids)) or "none"
        return (
            f"{where}.tool_call_id {json.dumps(call_id)} matches no earlier tool call "
            f"(the row's call ids: {known})"
        )

    def unanswered(self, where: str) -> str | None:
        """Open calls when `where` (a non-tool message) comes: an error."""
        if not self.open:
            return None
        if self.open_function:
            missing = "its function_call"
        else:
            missing = "tool call(s) " + ", ".join(json.dumps(call) for call in self.open)
        return (
            f"{where} comes before {missing} of {self.open_where} got an answer: follow the "
            "assistant message with one 'tool' message per call (tool_call_id = the call's id)"
        )


def normalize_tool_row(row: Row) -> Row:
    """The row as transformers' chat templates take it (see the module's docstring).

    A legacy `function_call` gets the id `callNNNNN` (the row's Nth; nine letters and digits,
    as Mistral's templates want) and the `function` message after it that id as its
    `tool_call_id`, so that templates which pair calls and results by id render them."""
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    legacy_calls = 0
    for message in row["messages"]:
        role = message["role"]
        out: dict[str, Any] = {"role": _ROLE_AS.get(role, role)}
        content = message.get("content")
        out["content"] = content if isinstance(content, str) else ""
        if role == "assistant":
            if "function_call" in message:
                legacy_calls += 1
            calls = _calls(message, f"call{legacy_calls:05d}")
            if calls:
                out["tool_calls"] = calls
                for call in calls:
                    names[call["id"]] = call["function"]["name"]
            if message.get("weight") == 0:
                out["weight"] = 0
        elif role == "tool":
            out["tool_call_id"] = message["tool_call_id"]
            out["name"] = names.get(message["tool_call_id"], "")
        elif role == "function":
            out["tool_call_id"] = f"call{legacy_calls:05d}"
            out["name"] = message["name"]
        messages.append(out)
    normalized: Row = {"messages": messages}
    if "tools" in row:
        normalized["tools"] = row["tools"]
    elif "functions" in row:
        normalized["tools"] = [{"type": "function", "function": f} for f in row["functions"]]
    return normalized


def _calls(message: dict[str, Any], legacy_id: str) -> list[dict[str, Any]]:
    if "function_call" in message:
        function = message["function_call"]
        return [
            {
                "id": legacy_id,
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": json.loads(function["arguments"]),
                },
            }
        ]
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": json.loads(call["function"]["arguments"]),
            },
        }
        for call in message.get("tool_calls") or []
    ]


def has_tools(row: Row) -> bool:
    """Whether a (normalized) row uses tool calling: tools, tool calls or tool messages."""
    return bool(row.get("tools")) or any(
        message.get("tool_calls") or message["role"] == "tool" for message in row["messages"]
    )


def tool_chars(row: Row) -> int:
    """Characters of a valid row's tool definitions and calls (for the size estimate)."""
    chars = sum(len(json.dumps(item)) for item in row.get("tools") or row.get("functions") or [])
    for message in row["messages"]:
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                chars += len(str(call["function"].get("name", "")))
                chars += len(str(call["function"].get("arguments", "")))
        function = message.get("function_call")
        if isinstance(function, dict):
            chars += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return chars


def row_features(row: Row) -> set[str]:
    """What a valid (raw) row uses, for the file's stats["features"]: "tools" (a non-empty
    tools or functions list), "tool_calls", "tool_results", "weight_0"."""
    found: set[str] = set()
    if row.get("tools") or row.get("functions"):
        found.add("tools")
    for message in row["messages"]:
        if message.get("tool_calls") or message.get("function_call"):
            found.add("tool_calls")
        if message["role"] in TOOL_ROLES:
            found.add("tool_results")
        if message.get("weight") == 0:
            found.add("weight_0")
    return found

"""The causal LM row formats: prompt-completion (JSONL or CSV) and chat (JSONL only).

Chat rows are checked the way OpenAI documents its fine-tuning files (docs/internals.md).
"""

from __future__ import annotations

import json
from typing import Any

from task_plugins.base import Row, RowFormat
from task_plugins.causal_lm.chat_tools import (
    TOOL_ROLES,
    TOOL_ROW_KEYS,
    CallLedger,
    check_row_tools,
    check_tool_calls,
    normalize_tool_row,
    row_features,
    tool_chars,
)
from task_plugins.rows import check_text, json_type

PROMPT_COMPLETION = "prompt-completion"
CHAT = "chat"
# `developer` is OpenAI's newer name for `system` (read as system, as chat completions do)
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# The keys OpenAI documents for a chat training message. `name` is accepted and not trained
# on; `weight` (assistant messages only) says whether to learn from that message.
CHAT_MESSAGE_KEYS = (
    "role",
    "content",
    "name",
    "weight",
    "tool_calls",
    "function_call",
    "tool_call_id",
)
# A rough allowance for the role header and end-of-turn marker of each chat message.
TOKENS_PER_MESSAGE = 4


def _check_prompt_completion(row: Row) -> str | None:
    return check_text(row, "prompt") or check_text(row, "completion")


PROMPT_COMPLETION_ROWS = RowFormat(
    name=PROMPT_COMPLETION,
    columns=("prompt", "completion"),
    check=_check_prompt_completion,
    chars=lambda row: len(row["prompt"]) + len(row["completion"]),
)


def _check_chat(row: Row) -> str | None:
    """The checks OpenAI documents for a chat example, first problem first."""
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return f"'messages' must be a non-empty list, got {json_type(messages)}"
    problem = check_row_tools(row)
    if problem:
        return problem
    ledger = CallLedger()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        problem = _check_message(message, where, ledger)
        if problem:
            return problem
    if row.get("parallel_tool_calls") is False:
        for index, message in enumerate(messages):
            if len(message.get("tool_calls") or []) > 1:
                return (
                    f"messages[{index}] makes {len(message['tool_calls'])} tool calls but the "
                    "row sets parallel_tool_calls to false: one call per assistant message"
                )
    assistants = [message for message in messages if message["role"] == "assistant"]
    if not assistants:
        return "'messages' has no assistant message: nothing to learn from"
    if all(message.get("weight") == 0 for message in assistants):
        return (
            "every assistant message has weight 0: nothing to learn from; give at least one "
            "weight 1 (or no weight)"
        )
    return None


def _check_message(message: Any, where: str, ledger: CallLedger) -> str | None:
    if not isinstance(message, dict):
        return f"{where} must be an object with 'role' and 'content', got {json_type(message)}"
    unknown = set(message) - set(CHAT_MESSAGE_KEYS)
    if unknown:
        return (
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a message may only have "
            f"{', '.join(CHAT_MESSAGE_KEYS)}"
        )
    if "role" not in message:
        return f"{where} has no 'role'"
    role = message["role"]
    if role not in CHAT_ROLES:
        return f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}"
    calls = "tool_calls" in message or "function_call" in message
    for key in ("tool_calls", "function_call"):
        if key in message and role != "assistant":
            return f"{where}.{key} is only allowed on assistant messages"
    if "tool_call_id" in message and role != "tool":
        return f"{where}.tool_call_id is only allowed on tool messages"
    if "weight" in message:
        problem = _check_weight(message["weight"], role, where)
        if problem:
            return problem
    problem = ledger.answer(message, where) if role in TOOL_ROLES else ledger.unanswered(where)
    if problem:
        return problem
    # an assistant message that calls tools may have no content (or null)
    if not (calls and message.get("content") is None):
        if "content" not in message:
            return f"{where} has no 'content'"
        problem = _check_content(message["content"], where)
        if problem:
            return problem
    if "name" in message and (not isinstance(message["name"], str) or not message["name"]):
        return f"{where}.name must be a non-empty string, got {json_type(message['name'])}"
    if role == "function" and "name" not in message:
        return f"{where} (role 'function') needs 'name': the function whose result it holds"
    if calls:
        problem = check_tool_calls(message, where, ledger.ids)
        if problem:
            return problem
        ledger.called(message, where)
    return None


def _check_content(content: Any, where: str) -> str | None:
    if not isinstance(content, str):
        hint = "; content parts (a list) are not supported" if isinstance(content, list) else ""
        return f"{where}.content must be a string, got {json_type(content)}{hint}"
    if not content:
        return f"{where}.content is empty"
    return None


def _check_weight(weight: Any, role: str, where: str) -> str | None:
    if role != "assistant":
        return f"{where}.weight is only allowed on assistant messages"
    if isinstance(weight, bool) or weight not in (0, 1):
        return f"{where}.weight must be 0 or 1, got {json.dumps(weight)}"
    return None


def _chat_chars(row: Row) -> int:
    contents = sum(len(message.get("content") or "") for message in row["messages"])
    return contents + tool_chars(row)


CHAT_ROWS = RowFormat(
    name=CHAT,
    columns=("messages",),
    check=_check_chat,
    normalize=normalize_tool_row,
    chars=_chat_chars,
    token_overhead=lambda row: TOKENS_PER_MESSAGE * len(row["messages"]),
    csv=False,
    optional_keys=frozenset(TOOL_ROW_KEYS),
    features=row_features,
)

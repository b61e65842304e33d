"""The causal LM row formats: prompt-completion (JSONL or CSV) and chat (JSONL only).

Chat rows are checked the way OpenAI documents its fine-tuning files (docs/internals.md).
"""

from __future__ import annotations

import json
from typing import Any

from task_plugins.base import Row, RowFormat
from task_plugins.rows import check_text, json_type

PROMPT_COMPLETION = "prompt-completion"
CHAT = "chat"
CHAT_ROLES = ("system", "user", "assistant")
# The keys OpenAI documents for a chat training message. `name` is accepted and not trained
# on; `weight` (assistant messages only) says whether to learn from that message.
CHAT_MESSAGE_KEYS = ("role", "content", "name", "weight")
# A rough allowance for the role header and end-of-turn marker of each chat message.
TOKENS_PER_MESSAGE = 4
# What OpenAI's format has for tool calling, which Tunery does not train.
_TOOL_ROLES = ("tool", "function")
_TOOL_MESSAGE_KEYS = frozenset({"tool_calls", "function_call", "tool_call_id"})
_TOOL_ROW_KEYS = frozenset({"tools", "functions", "parallel_tool_calls"})
_TOOLS_UNSUPPORTED = (
    "tool and function calling is not supported: Tunery fine-tunes on the text of system, "
    "user and assistant messages"
)


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
    for index, message in enumerate(messages):
        problem = _check_message(message, f"messages[{index}]")
        if problem:
            return problem
    if not any(message["role"] == "assistant" for message in messages):
        return "'messages' has no assistant message: nothing to learn from"
    return None


def _check_message(message: Any, where: str) -> str | None:
    if not isinstance(message, dict):
        return f"{where} must be an object with 'role' and 'content', got {json_type(message)}"
    tool_keys = set(message) & _TOOL_MESSAGE_KEYS
    if tool_keys:
        return f"{where} has {', '.join(sorted(tool_keys))}: {_TOOLS_UNSUPPORTED}"
    unknown = set(message) - set(CHAT_MESSAGE_KEYS)
    if unknown:
        return (
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a message may only have "
            f"{', '.join(CHAT_MESSAGE_KEYS)}"
        )
    for key in ("role", "content"):
        if key not in message:
            return f"{where} has no '{key}'"
    role = message["role"]
    if role in _TOOL_ROLES:
        return f"{where}.role is {role!r}: {_TOOLS_UNSUPPORTED}; remove that message"
    if role not in CHAT_ROLES:
        return f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}"
    content = message["content"]
    if not isinstance(content, str):
        hint = "; content parts (a list) are not supported" if isinstance(content, list) else ""
        return f"{where}.content must be a string, got {json_type(content)}{hint}"
    if not content:
        return f"{where}.content is empty"
    if "name" in message and (not isinstance(message["name"], str) or not message["name"]):
        return f"{where}.name must be a non-empty string, got {json_type(message['name'])}"
    if "weight" in message:
        return _check_weight(message["weight"], role, where)
    return None


def _check_weight(weight: Any, role: str, where: str) -> str | None:
    if role != "assistant":
        return f"{where}.weight is only allowed on assistant messages"
    if isinstance(weight, bool) or weight not in (0, 1):
        return f"{where}.weight must be 0 or 1, got {json.dumps(weight)}"
    if weight == 0:
        # the trainer learns from every assistant message; skipping one is not wired yet
        return (
            f"{where}.weight 0 is not supported yet: every assistant message is trained on; "
            "remove the weight (or the message)"
        )
    return None


def _tool_keys(extra: set[str]) -> str | None:
    tools = extra & _TOOL_ROW_KEYS
    if not tools:
        return None
    return f"unexpected key(s) {', '.join(sorted(tools))}: {_TOOLS_UNSUPPORTED}; remove them"


def _normalize_chat(row: Row) -> Row:
    # what the trainer renders: name is not trained on, weight is always 1 here
    return {
        "messages": [
            {"role": message["role"], "content": message["content"]} for message in row["messages"]
        ]
    }


CHAT_ROWS = RowFormat(
    name=CHAT,
    columns=("messages",),
    check=_check_chat,
    normalize=_normalize_chat,
    chars=lambda row: sum(len(message["content"]) for message in row["messages"]),
    token_overhead=lambda row: TOKENS_PER_MESSAGE * len(row["messages"]),
    csv=False,
    extra_keys_problem=_tool_keys,
)

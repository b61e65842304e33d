"""The `preference` row format of DPO jobs: a prompt, a preferred and a non-preferred answer.

Two layouts are taken, both detected by their keys and both read as one format:

- OpenAI's: `{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
  "content": ...}], "non_preferred_output": [...]}`, each output exactly one assistant
  message;
- TRL's: `{"prompt", "chosen", "rejected"}`, strings (also in CSV) or message lists (a prompt
  of messages, each answer one assistant message).

Every row normalizes to `{"prompt": str | [messages], "chosen": str, "rejected": str}`:
the trainer renders a message prompt with the chat template and a string prompt as text.
Torch-free.
"""

from __future__ import annotations

from typing import Any

from task_plugins.base import Row, RowFormat
from task_plugins.causal_lm.chat_tools import CallLedger
from task_plugins.causal_lm.formats import TOKENS_PER_MESSAGE, _check_message
from task_plugins.rows import json_type

PREFERENCE = "preference"
OPENAI_OUTPUTS = ("preferred_output", "non_preferred_output")
TRL_ANSWERS = ("chosen", "rejected")
_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
_TOOLS_UNSUPPORTED = (
    "tool calling is not supported in preference data: Tunery trains on the text of system, "
    "user and assistant messages"
)


def _check_openai(row: Row) -> str | None:
    given = row["input"]
    if not isinstance(given, dict):
        return f"'input' must be an object with 'messages', got {json_type(given)}"
    unknown = set(given) - set(_INPUT_KEYS)
    if unknown:
        return (
            f"input has unknown key(s) {', '.join(sorted(unknown))}; it may only have "
            f"{', '.join(_INPUT_KEYS)}"
        )
    if "messages" not in given:
        return "input has no 'messages': give the conversation so far as input.messages"
    tools = set(given) & {"tools", "parallel_tool_calls"}
    if tools:
        return f"input has {', '.join(sorted(tools))}: {_TOOLS_UNSUPPORTED}; remove them"
    problem = _check_prompt_messages(given["messages"], "input.messages")
    if problem:
        return problem
    for key in OPENAI_OUTPUTS:
        problem = _check_output(row[key], key)
        if problem:
            return problem
    if _answer(row["preferred_output"]) == _answer(row["non_preferred_output"]):
        return "preferred_output and non_preferred_output are equal: nothing to prefer"
    return None


def _check_trl(row: Row) -> str | None:
    prompt = row["prompt"]
    if isinstance(prompt, list):
        problem = _check_prompt_messages(prompt, "prompt")
    elif isinstance(prompt, str):
        problem = "'prompt' is empty" if not prompt.strip() else None
    else:
        problem = f"'prompt' must be a string or a list of messages, got {json_type(prompt)}"
    if problem:
        return problem
    for key in TRL_ANSWERS:
        value = row[key]
        if isinstance(value, list):
            problem = _check_output(value, key)
        elif isinstance(value, str):
            problem = f"'{key}' is empty" if not value.strip() else None
        else:
            problem = (
                f"'{key}' must be a string or a list of one assistant message, got "
                f"{json_type(value)}"
            )
        if problem:
            return problem
    if _answer(row["chosen"]) == _answer(row["rejected"]):
        return "chosen and rejected are equal: nothing to prefer"
    return None


def _check_prompt_messages(messages: Any, where: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"'{where}' must be a non-empty list of messages, got {json_type(messages)}"
    ledger = CallLedger()
    for index, message in enumerate(messages):
        problem = _check_message(message, f"{where}[{index}]", ledger)
        if problem:
            return problem
    if messages[-1]["role"] == "assistant":
        return (
            f"{where} ends with an assistant message; the answers to compare come after it, so "
            "the last prompt message must be a system or user message"
        )
    return None


def _check_output(output: Any, where: str) -> str | None:
    if not isinstance(output, list) or not output:
        return f"'{where}' must be a list of exactly one assistant message, got {json_type(output)}"
    if len(output) > 1:
        roles = ", ".join(
            str(message.get("role")) if isinstance(message, dict) else json_type(message)
            for message in output
        )
        return (
            f"'{where}' has {len(output)} messages ({roles}); it must be exactly one assistant "
            "message"
        )
    problem = _check_message(output[0], f"{where}[0]", CallLedger())
    if problem:
        return problem
    if output[0]["role"] != "assistant":
        return f"{where}[0].role must be 'assistant', got {output[0]['role']!r}"
    return None


def _answer(output: str | list[dict[str, Any]]) -> str:
    return output if isinstance(output, str) else str(output[0]["content"])


def _prompt(prompt: str | list[dict[str, Any]]) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        return prompt
    return [{"role": message["role"], "content": message["content"]} for message in prompt]


def normalize_preference(row: Row) -> Row:
    """Either layout as the trainer reads it (a file may mix the two layouts)."""
    if "input" in row:
        return {
            "prompt": _prompt(row["input"]["messages"]),
            "chosen": _answer(row["preferred_output"]),
            "rejected": _answer(row["non_preferred_output"]),
        }
    return {
        "prompt": _prompt(row["prompt"]),
        "chosen": _answer(row["chosen"]),
        "rejected": _answer(row["rejected"]),
    }


def _chars(row: Row) -> int:
    """The longer of the two sequences a row trains on (prompt + one answer)."""
    normal = normalize_preference(row)
    prompt = normal["prompt"]
    prompt_chars = (
        len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
    )
    return prompt_chars + max(len(normal["chosen"]), len(normal["rejected"]))


def _overhead(row: Row) -> int:
    prompt = row["input"]["messages"] if "input" in row else row["prompt"]
    return TOKENS_PER_MESSAGE * (len(prompt) + 1) if isinstance(prompt, list) else 0


OPENAI_PREFERENCE_ROWS = RowFormat(
    name=PREFERENCE,
    columns=("input", "preferred_output", "non_preferred_output"),
    check=_check_openai,
    normalize=normalize_preference,
    chars=_chars,
    token_overhead=_overhead,
    csv=False,
)

TRL_PREFERENCE_ROWS = RowFormat(
    name=PREFERENCE,
    columns=("prompt", "chosen", "rejected"),
    check=_check_trl,
    normalize=normalize_preference,
    chars=_chars,
    token_overhead=_overhead,
)

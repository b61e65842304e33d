"""Rendering chat rows with tools through the base model's own chat template, and telling,
before any training, whether that template can render them.

transformers' `apply_chat_template(messages, tools=...)` hands `tools` (JSON schemas) to the
template; assistant `tool_calls` and `tool` messages are in the messages (see
task_plugins/causal_lm/chat_tools.py for their form). A template that ignores them would
train the model on chats with the tool definitions, the calls or their results silently
missing, so a job whose rows use tool calling checks the template first: it renders a probe
conversation (a tool, a call, a result, each holding a marker string) and requires every
marker the rows need to come out in the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.failures import Failure
from task_plugins.base import Row
from task_plugins.causal_lm.chat_tools import has_tools

_TOOL = "tunery_probe_tool"
_ARGUMENT = "tunery_probe_argument"
_RESULT = "tunery_probe_result"
# nine letters and digits: what Mistral's templates require of a call id
_CALL_ID = "call00001"
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": _TOOL,
        "description": "a probe",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
_USER = {"role": "user", "content": "hello"}
_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": _CALL_ID,
            "type": "function",
            "function": {"name": _TOOL, "arguments": {"q": _ARGUMENT}},
        }
    ],
}
_ANSWER = {"role": "tool", "tool_call_id": _CALL_ID, "name": _TOOL, "content": _RESULT}


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    generation_prompt: bool = False,
) -> str:
    """The chat as the template writes it (tools passed only when there are some)."""
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt, **extra
    )
    return str(text)


def tool_template_problem(tokenizer: Any, rows: Sequence[Row]) -> str | None:
    """What the tokenizer's chat template fails to render of the tool calling `rows` use,
    or None (also when no row uses tool calling)."""
    used = [row for row in rows if "messages" in row and has_tools(row)]
    if not used:
        return None
    needs_tools = any(row.get("tools") for row in used)
    needs_calls = any(m.get("tool_calls") for row in used for m in row["messages"])
    needs_results = any(m["role"] == "tool" for row in used for m in row["messages"])
    probes: list[tuple[list[dict[str, Any]], str, str]] = []
    if needs_tools:
        probes.append(([_USER], _TOOL, "leaves out the tool definitions (`tools`)"))
    if needs_calls:
        probes.append(([_USER, _CALL], _ARGUMENT, "leaves out the assistant's tool_calls"))
    if needs_results:
        probes.append(([_USER, _CALL, _ANSWER], _RESULT, "leaves out the tool messages"))
    for messages, marker, missing in probes:
        try:
            text = render_chat(tokenizer, messages, [_PROBE_TOOL])
        except Exception as exc:  # a template's own refusal (raise_exception) or a bug
            return f"fails on a chat with tools: {exc}"
        if marker not in text:
            return missing
    return None


def check_tool_template(tokenizer: Any, rows: Sequence[Row], base_name: str) -> None:
    """Raise a Failure (param `model`) when rows use tool calling that the template drops."""
    problem = tool_template_problem(tokenizer, rows)
    if problem is None:
        return
    count = sum(1 for row in rows if "messages" in row and has_tools(row))
    raise Failure(
        "unsupported_chat_template",
        f"{count} training row{'s use' if count > 1 else ' uses'} tool calling, but the chat "
        f"template of {base_name} {problem} (checked at job start, before training): choose "
        "a base model whose chat template takes `tools`, as transformers' "
        "apply_chat_template passes them (e.g. Qwen2.5 or Llama 3.1 Instruct), or remove the "
        "tools, tool_calls and tool messages from the training file",
        "model",
    )

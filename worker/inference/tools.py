"""Tool calls in generated text: which convention a model family writes them in, and parsing
them back into OpenAI's `tool_calls`.

The tools themselves reach the model through its own chat template (transformers'
`apply_chat_template(..., tools=...)`); what the model writes back follows its family's
convention, read off the template:

- **hermes** (Qwen2, Qwen2.5, Qwen3, Hermes 2/3 and the many templates that copied them):
  each call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; text before the
  first call is the message content.
- **llama3_json** (Llama 3.1, 3.2, 3.3): the whole reply is one JSON object
  `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`), or several
  separated by `;`.

A template that renders no tools is refused when tools are sent; one that renders them in
another convention (Mistral's [TOOL_CALLS], ...) is refused with the families supported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from worker.inference.predictors import PredictionInputError

Family = Literal["hermes", "llama3_json"]
FAMILIES: dict[Family, str] = {
    "hermes": "Hermes/Qwen <tool_call> JSON (Qwen2, Qwen2.5, Qwen3, Hermes)",
    "llama3_json": "Llama 3 JSON (Llama 3.1, 3.2, 3.3)",
}
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ToolFormat:
    family: Family
    names: tuple[str, ...]  # the tools offered

    def streamable(self, text: str) -> int:
        """How much of the text so far can be streamed as content: never the start of a
        tool call, nor what could become one."""
        if self.family == "llama3_json":
            stripped = text.lstrip()
            if not stripped or stripped.startswith("{") or PYTHON_TAG.startswith(stripped[:14]):
                return 0
            return len(text)
        at = text.find(CALL_OPEN)
        if at >= 0:
            return at
        for size in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
            if text.endswith(CALL_OPEN[:size]):
                return len(text) - size
        return len(text)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """The content and the tool calls of a reply; no calls when any call is not valid
        JSON naming an offered tool (the reply is then content as it is)."""
        if self.family == "llama3_json":
            return self._parse_llama3(text)
        bodies = _HERMES_CALL.findall(text)
        if not bodies:
            return text, []
        calls = [self._call(body, "arguments") for body in bodies]
        if any(c is None for c in calls):
            return text, []
        return text[: text.find(CALL_OPEN)].strip(), [c for c in calls if c is not None]

    def _parse_llama3(self, text: str) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix(PYTHON_TAG).strip()
        if not body.startswith("{"):
            return text, []
        calls = [self._call(part, "parameters") for part in _split_objects(body)]
        if not calls or any(c is None for c in calls):
            return text, []
        return "", [c for c in calls if c is not None]

    def _call(self, body: str, arguments_key: str) -> ToolCall | None:
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get(arguments_key, value.get("arguments", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(value["name"], json.dumps(arguments))

    def call_grammar_parts(
        self, tools: Sequence[Mapping[str, Any]], only: str | None
    ) -> tuple[str, dict[str, Any], str]:
        """(prefix, JSON schema of the call object, suffix) that force one call, of the tool
        named `only` or of any offered tool."""
        key = "parameters" if self.family == "llama3_json" else "arguments"
        options = []
        for tool in tools:
            function = tool["function"]
            if only is not None and function["name"] != only:
                continue
            parameters = function.get("parameters") or {"type": "object", "properties": {}}
            options.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": function["name"]}, key: parameters},
                    "required": ["name", key],
                    "additionalProperties": False,
                }
            )
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        if self.family == "llama3_json":
            return "", schema, ""
        return CALL_OPEN, schema, CALL_CLOSE


def tool_format(chat_template: Any, tools: Sequence[Mapping[str, Any]], index: int) -> ToolFormat:
    """The convention this template's model calls tools in; raises PredictionInputError."""
    template = chat_template if isinstance(chat_template, str) else ""
    where = f"inputs.{index}.tools"
    if "tools" not in template:
        raise PredictionInputError(
            f"{where}: this model's chat template does not render tools, so the model cannot "
            "be told about them; use a base whose template supports tools (Qwen2.5, Llama "
            "3.1, Hermes) or send the request without tools",
            param=where,
            code="tools_unsupported",
        )
    names = tuple(str(t["function"]["name"]) for t in tools)
    if CALL_OPEN in template:
        return ToolFormat("hermes", names)
    if PYTHON_TAG in template or "ipython" in template:
        return ToolFormat("llama3_json", names)
    raise PredictionInputError(
        f"{where}: this model's chat template writes tool calls in a convention Tunery does "
        f"not parse; supported: {'; '.join(FAMILIES.values())}",
        param=where,
        code="tools_unsupported",
    )


def _split_objects(body: str) -> list[str]:
    """Top-level JSON objects of `{...}; {...}` (or one object)."""
    try:
        json.loads(body)
        return [body]
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    parts, at = [], 0
    while at < len(body):
        try:
            _, end = decoder.raw_decode(body, at)
        except ValueError:
            return [body]
        parts.append(body[at:end])
        at = end
        while at < len(body) and body[at] in " \n\t;":
            at += 1
    return parts

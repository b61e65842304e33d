"""A chat template with tool support for the tiny test models (shared by the training-data
and the inference tests; additive: `models.CHAT_TEMPLATE` is unchanged).

It follows the Hermes / Qwen2.5 conventions that transformers' chat templating documents:
- `tools` (OpenAI's JSON schemas, `{"type": "function", "function": {...}}`) are listed in
  the system turn, one JSON object per line between `<tools>` and `</tools>`;
- an assistant's `tool_calls` are written after its content, each as
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (arguments as a JSON object;
  a string, as OpenAI sends it, is written as it is);
- a `tool` message is a `<|tool|>` turn holding `<tool_response>...</tool_response>`.

Without `tools` and tool messages it renders exactly what `models.CHAT_TEMPLATE` renders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOOLS_OPEN = "<tools>"
TOOLS_CLOSE = "</tools>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

TOOL_CHAT_TEMPLATE = (
    # the system turn: the system message (if first) and then the tools, if any
    "{% set first = messages[0] if messages else none %}"
    "{% if tools %}"
    "<|system|>\n"
    "{% if first and first['role'] == 'system' %}{{ first['content'] }}\n\n{% endif %}"
    "You may call one or more functions. Their signatures:\n"
    "<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "</tools>\n"
    'For each call, write <tool_call>{"name": <name>, "arguments": <JSON object>}</tool_call>'
    "{{ eos_token }}\n"
    "{% elif first and first['role'] == 'system' %}"
    "<|system|>\n{{ first['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' %}"
    "<|assistant|>\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% set function = call['function'] if call.get('function') else call %}"
    '<tool_call>{"name": {{ function["name"] | tojson }}, "arguments": '
    "{% if function['arguments'] is string %}{{ function['arguments'] }}"
    "{% else %}{{ function['arguments'] | tojson }}{% endif %}}</tool_call>"
    "{% endfor %}"
    "{{ eos_token }}\n"
    "{% elif message['role'] == 'tool' %}"
    "<|tool|>\n<tool_response>{{ message['content'] }}</tool_response>{{ eos_token }}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def add_tool_template(model_dir: Path) -> Path:
    """Give the tokenizer saved in `model_dir` the tool template (saved in place)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    return model_dir


def build_tiny_tool_llama(target: Path, seed: int = 0) -> Path:
    """`models.build_tiny_llama` whose chat template supports tools."""
    from tests.support.models import build_tiny_llama

    return add_tool_template(build_tiny_llama(target, seed=seed))


def copy_with_tool_template(source: Path, target: Path) -> Path:
    """A copy of the model folder `source` whose chat template supports tools."""
    shutil.copytree(source, target)
    return add_tool_template(target)

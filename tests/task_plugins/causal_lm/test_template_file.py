"""At job creation: a base whose chat template's source never names tools, tool_calls or the
tool role cannot learn from a file that uses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from task_plugins.causal_lm.template_file import template_sources, tool_support_problem
from tests.support.tool_template import TOOL_CHAT_TEMPLATE, copy_with_tool_template

ALL = {"features": {"tools": 4, "tool_calls": 8, "tool_results": 4, "weight_0": 6}}


def test_a_plain_template_is_refused_naming_what_it_drops(tiny_llama: Path) -> None:
    problem = tool_support_problem(tiny_llama, ALL)
    assert problem == (
        f"the training file uses tool calling (in 8 or more rows), but {tiny_llama.name} never "
        "renders the tool definitions (`tools`) or the assistant's tool_calls or the tool "
        "messages, so it cannot learn from them: choose a base model whose chat template "
        "takes `tools`, as transformers' apply_chat_template passes them (e.g. Qwen2.5 or "
        "Llama 3.1 Instruct), or remove the tools, tool_calls and tool messages from the file"
    )
    # weights alone, or an older file without features: nothing to check
    assert tool_support_problem(tiny_llama, {"features": {"weight_0": 3}}) is None
    assert tool_support_problem(tiny_llama, {"rows": 10}) is None


def test_a_tool_template_passes(tiny_llama: Path, tmp_path: Path) -> None:
    tools = copy_with_tool_template(tiny_llama, tmp_path / "tools")
    assert TOOL_CHAT_TEMPLATE in template_sources(tools)
    assert tool_support_problem(tools, ALL) is None


def test_templates_in_tokenizer_config_and_none_at_all(tiny_llama: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    for path in base.glob("*.jinja"):
        path.unlink()
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    assert template_sources(base) == []
    problem = tool_support_problem(base, ALL)
    assert problem is not None and "base has no chat template (Tunery's default one" in problem
    # the named-templates form: a "tool_use" template renders them
    config["chat_template"] = [
        {"name": "default", "template": "{{ messages }}"},
        {"name": "tool_use", "template": TOOL_CHAT_TEMPLATE},
    ]
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    assert tool_support_problem(base, ALL) is None
    only_calls = {"features": {"tool_calls": 1}}
    config["chat_template"] = "{% for m in messages %}{{ m.tool_calls }}{% endfor %}"
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    assert tool_support_problem(base, only_calls) is None
    problem = tool_support_problem(base, {"features": {"tool_calls": 1, "tool_results": 1}})
    assert problem is not None and "never renders the tool messages, so" in problem

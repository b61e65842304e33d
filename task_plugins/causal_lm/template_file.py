"""At job creation (torch-free, in the API): whether a base model's chat template can render
the tool calling a training file uses, read from the template's source.

A Jinja template reads `tools` and a message's `tool_calls` by those names, so a template
whose source never names them cannot render them: the job is refused at once. One that
names them may still drop them; the trainer renders a probe before training to tell
(task_plugins/causal_lm/chat_render.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# what a template's source must name to render each feature (stats["features"])
_NEEDS = (
    ("tools", re.compile(r"\btools\b"), "the tool definitions (`tools`)"),
    ("tool_calls", re.compile(r"\btool_calls\b"), "the assistant's tool_calls"),
    ("tool_results", re.compile(r"""['"]tool['"]"""), "the tool messages"),
)


def template_sources(base_dir: Path) -> list[str]:
    """The chat template sources saved with a base model's tokenizer: chat_template.jinja,
    additional_chat_templates/*.jinja and tokenizer_config.json's chat_template (a string,
    or a list of {"name", "template"})."""
    sources = []
    for path in [
        base_dir / "chat_template.jinja",
        *sorted((base_dir / "additional_chat_templates").glob("*.jinja")),
    ]:
        if path.is_file():
            sources.append(path.read_text(errors="replace"))
    try:
        config = json.loads((base_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, str):
        sources.append(template)
    elif isinstance(template, list):
        sources += [
            str(item["template"])
            for item in template
            if isinstance(item, dict) and isinstance(item.get("template"), str)
        ]
    return sources


def tool_support_problem(base_dir: Path, stats: Mapping[str, Any]) -> str | None:
    """The problem of training this base on a file with these stats, or None."""
    features = stats.get("features") or {}
    used = [(name, pattern, what) for name, pattern, what in _NEEDS if features.get(name)]
    if not used:
        return None
    rows = max(int(features[name]) for name, _, _ in used)
    sources = template_sources(base_dir)
    if not sources:
        problem = "has no chat template (Tunery's default one, used instead, renders no tools)"
    else:
        missing = [what for _, pattern, what in used if not any(pattern.search(s) for s in sources)]
        if not missing:
            return None
        problem = f"never renders {' or '.join(missing)}"
    return (
        f"the training file uses tool calling (in {rows} or more rows), but {base_dir.name} "
        f"{problem}, so it cannot learn from them: choose a base model whose chat template "
        "takes `tools`, as transformers' apply_chat_template passes them (e.g. Qwen2.5 or "
        "Llama 3.1 Instruct), or remove the tools, tool_calls and tool messages from the file"
    )

"""A tiny Llama whose chat template renders tools, with room for a prompt that lists them.

The tools' JSON signatures take ~600 tokens in the tiny 400-token vocabulary, more than the
256 positions `models.build_tiny_llama` gives; rotary positions let the same weights take a
longer context, so the copy only raises `max_position_embeddings`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.tool_template import copy_with_tool_template

TOOL_LLAMA = "tiny-tool-llama-1k"


def add_tool_llama(models_dir: Path, source: str = "tiny-llama") -> str:
    """Put TOOL_LLAMA (a copy of models_dir/source with the tool template) in models_dir
    once; its model id."""
    target = models_dir / TOOL_LLAMA
    if not (target / "config.json").exists():
        staging = models_dir.parent / f".{TOOL_LLAMA}-{id(target)}"
        copy_with_tool_template(models_dir / source, staging)
        config = json.loads((staging / "config.json").read_text())
        config["max_position_embeddings"] = 1024
        (staging / "config.json").write_text(json.dumps(config))
        staging.rename(target)  # whole or not at all: the API lists the folder at once
    return TOOL_LLAMA

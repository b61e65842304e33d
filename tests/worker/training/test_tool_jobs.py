"""A training job on tool-calling chats whose base template names tools but leaves them out
fails at start, before training, saying what the template drops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from tests.support import openai_examples
from tests.support.models import CHAT_TEMPLATE
from tests.worker.training.conftest import make_spec
from tests.worker.training.test_options import failure

# it reads `tools` (so the check at job creation lets it by) but writes only their number
COUNTING_TEMPLATE = "{% if tools %}<|tools|>\n{{ tools | length }}\n{% endif %}" + CHAT_TEMPLATE


def test_a_template_that_drops_the_tools_fails_the_job_at_start(
    tmp_path: Path, tiny_llama: Path
) -> None:
    base = tmp_path / "counting-llama"
    shutil.copytree(tiny_llama, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = COUNTING_TEMPLATE
    tokenizer.save_pretrained(base)
    rows = [json.loads(line) for line in openai_examples.training_file().splitlines()]
    # the first 10 rows train: 7 of them use tools (the docs' four tool lines, then three)
    spec = make_spec(tmp_path, "causal-lm", base, rows[:10], rows[10:], max_seq_length=256)
    failed = failure(tmp_path, spec)
    assert failed["code"] == "unsupported_chat_template" and failed["param"] == "model"
    assert failed["message"].startswith(
        "7 training rows use tool calling, but the chat template of counting-llama leaves "
        "out the tool definitions (`tools`) (checked at job start, before training)"
    )

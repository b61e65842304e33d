"""A local Hub (tests/support/hub_server.py) with tiny models that a fixture saved with
save_pretrained, and HF_ENDPOINT pointed at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from tests.support.hub_server import FakeHub, folder_files

LLAMA = "tiny-org/tiny-llama"
BERT = "tiny-org/tiny-bert"
PICKLE_ONLY = "tiny-org/pickle-only"
CUSTOM_CODE = "tiny-org/custom-code"
AUTO_MAP = "tiny-org/auto-map"


@pytest.fixture
def hub(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    server = FakeHub().start()
    llama = folder_files(tiny_models / "tiny-llama")
    server.add(LLAMA, llama)
    server.add(BERT, folder_files(tiny_models / "tiny-bert"))
    config = llama["config.json"]
    server.add(PICKLE_ONLY, {"config.json": config, "pytorch_model.bin": b"\x80\x04pickle"})
    server.add(
        CUSTOM_CODE,
        {**llama, "modeling_tiny.py": b"import os\nos.system('echo pwned')\n"},
    )
    mapped = {**json.loads(config), "auto_map": {"AutoModelForCausalLM": "remote--modeling.X"}}
    server.add(AUTO_MAP, {**llama, "config.json": json.dumps(mapped).encode()})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    # tests/conftest.py starts the suite offline; these tests are about the Hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.stop()

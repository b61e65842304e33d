"""Fixtures: tiny models and a store of artifacts, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from app.storage import ArtifactStore
from tests.support.models import build_tiny_bert, build_tiny_gpt2, build_tiny_llama
from tests.worker.inference.artifacts import (
    CLS_ADAPTER,
    LM_ADAPTER,
    LM_FULL,
    build_causal_adapter,
    build_classification_adapter,
    write_manifest,
)
from worker.inference.server import create_app
from worker.inference.service import InferenceService


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference-models")


@pytest.fixture(scope="session")
def bert_dir(models_root: Path) -> Path:
    return build_tiny_bert(models_root / "bert")


@pytest.fixture(scope="session")
def llama_dir(models_root: Path) -> Path:
    return build_tiny_llama(models_root / "llama")


@pytest.fixture(scope="session")
def family_dirs(models_root: Path, llama_dir: Path) -> dict[str, Path]:
    """Tiny GPT-2 (learned positions, Conv1D) and Qwen2 (biased q/k/v) decoders."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    gpt2 = models_root / "gpt2"
    if not (gpt2 / "config.json").exists():
        build_tiny_gpt2(gpt2)
    qwen = models_root / "qwen2"
    if not (qwen / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(llama_dir)
        torch.manual_seed(0)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        Qwen2ForCausalLM(config).save_pretrained(qwen, safe_serialization=True)
        tokenizer.save_pretrained(qwen)
    return {"llama": llama_dir, "gpt2": gpt2, "qwen2": qwen}


@pytest.fixture(scope="session")
def store(models_root: Path, bert_dir: Path, llama_dir: Path) -> ArtifactStore:
    """A file:// store holding one artifact of each kind the trainer exports."""
    store = ArtifactStore(f"file://{models_root / 'artifacts'}", models_root / "cache")
    build_classification_adapter(bert_dir, store.local_dir(CLS_ADAPTER))
    build_causal_adapter(llama_dir, store.local_dir(LM_ADAPTER))
    full = build_tiny_llama(store.local_dir(LM_FULL), seed=3)
    write_manifest(full, task="causal-lm", format="full", base_model=str(llama_dir))
    return store


@pytest.fixture
def service(store: ArtifactStore) -> InferenceService:
    return InferenceService(store, max_models=4)


@pytest.fixture
def client(tmp_path: Path, store: ArtifactStore, service: InferenceService) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path), store=store, service=service)
    with TestClient(app) as test_client:
        yield test_client

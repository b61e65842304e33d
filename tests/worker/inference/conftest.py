"""Fixtures: tiny models and a store of artifacts, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from app.storage import ArtifactStore
from tests.support.models import build_tiny_bert, build_tiny_llama
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

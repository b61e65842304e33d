"""The API in-process on a real database, with the evaluation runner of the worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.storage import ArtifactStore
from tests.app.deployments.conftest import register_tuned
from worker.evaluation.runner import EvaluationRunner


@dataclass
class Evals:
    client: TestClient
    settings: Settings
    store: ArtifactStore
    runner: EvaluationRunner
    enqueued: list[str]
    tuned: Callable[..., str]


@pytest.fixture
def evals(migrated_database_url: str, tmp_path: Path, tiny_models: Path) -> Iterator[Evals]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_database_url,
        models_dir=tiny_models,
        inference_url="http://127.0.0.1:9",  # evaluation never needs the inference server
        heartbeat_seconds=0.5,
    )
    app = create_app(settings, reconciler=False)
    enqueued: list[str] = []
    app.state.enqueue_evaluation = enqueued.append
    store = ArtifactStore(settings.storage_url, settings.cache_dir)
    with TestClient(app) as client:
        sessionmaker = app.state.sessionmaker
        runner = EvaluationRunner(settings, sessionmaker, store, owner="worker-test")

        def tuned(task: str = "classification", labels: list[str] | None = None) -> str:
            return register_tuned(sessionmaker, store, tiny_models, task, labels)

        yield Evals(client, settings, store, runner, enqueued, tuned)

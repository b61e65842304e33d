"""The API in-process (TestClient) on a real database: SQLite, and Postgres when reachable.

Enqueued job ids are recorded instead of sent: these tests are about the control plane.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


def app_of(client: TestClient) -> FastAPI:
    """The FastAPI app behind a TestClient (typed by Starlette as any ASGI callable)."""
    return cast(FastAPI, client.app)


@dataclass
class Api:
    client: TestClient
    settings: Settings
    enqueued: list[str] = field(default_factory=list)


@pytest.fixture
def api(migrated_database_url: str, tmp_path: Path, tiny_models: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_database_url,
        models_dir=tiny_models,
        inference_url="http://127.0.0.1:9",  # nothing listens: predict must answer 503
        max_upload_bytes=64 * 1024,
    )
    app = create_app(settings, reconciler=False)
    recorded: list[str] = []
    app.state.enqueue = recorded.append
    with TestClient(app) as client:
        yield Api(client, settings, recorded)


def upload_text(api: Api, name: str, text: str | bytes) -> dict:
    data = text.encode() if isinstance(text, str) else text
    response = api.client.post(
        "/v1/files", files={"file": (name, data)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()

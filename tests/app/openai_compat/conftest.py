"""The API fixture behind a socket for the openai SDK, and a live inference server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.inference_client import InferenceClient
from app.settings import Settings
from app.storage import ArtifactStore
from tests.app.conftest import app_of
from tests.app.openai_compat.sdk import Sdk, sdk, serve_in_thread

__all__ = ["sdk"]  # the fixture, for the tests here


@pytest.fixture(scope="session")
def inference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real inference server (worker/inference), shared by the tests that generate."""
    from worker.inference.server import create_app
    from worker.inference.service import InferenceService

    data_dir = tmp_path_factory.mktemp("inference")
    store = ArtifactStore(f"file://{data_dir / 'artifacts'}", data_dir / "cache")
    app = create_app(Settings(data_dir=data_dir), store=store, service=InferenceService(store))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def chat_sdk(sdk: Sdk, inference_url: str) -> Iterator[Sdk]:
    """The SDK against an API whose inference server is up."""
    app = app_of(sdk.api.client)
    down = app.state.inference
    # its connections belong to the event loop of the server thread and close with it
    app.state.inference = InferenceClient(inference_url)
    yield sdk
    app.state.inference = down


def tiny_llama_spec(models_dir: Path) -> dict[str, object]:
    return {
        "key": "tiny-llama",
        "task": "causal-lm",
        "base_model_dir": str(models_dir / "tiny-llama"),
        "artifact": None,
    }

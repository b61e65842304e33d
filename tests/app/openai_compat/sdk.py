"""The real openai SDK against the in-process API, served over HTTP by uvicorn in a thread.

The SDK speaks HTTP through its own client, so the API fixture's app is put behind a real
socket; the inference server (with tiny-llama) runs the same way when a test chats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from openai import OpenAI

from tests.app.conftest import Api
from tests.support.live import free_port


@dataclass
class Sdk:
    client: OpenAI
    api: Api
    base_url: str


@pytest.fixture
def sdk(api: Api) -> Iterator[Sdk]:
    """The openai SDK against the `api` fixture's app (conftests import this fixture)."""
    with serve_in_thread(api.client.app) as base_url:
        client = sdk_client(base_url)
        yield Sdk(client, api, base_url)
        client.close()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free port until the block ends; yields its base URL."""
    port = free_port()
    # lifespan off: the app is already started (by the TestClient, or needs no startup)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def sdk_client(base_url: str, api_key: str = "sk-test") -> OpenAI:
    # no retries: a test wants the first answer, and its status decides the class; without
    # API keys (the embedded mode) any key is accepted
    return OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def inference_streams(inference_url: str, spec: dict[str, Any]) -> bool:
    """Whether the inference server streams predictions as server-sent events."""
    body = {"model": spec, "inputs": ["hi"], "parameters": {"max_new_tokens": 1}, "stream": True}
    with httpx.stream("POST", f"{inference_url}/internal/predict", json=body, timeout=120) as r:
        return r.status_code == 200 and r.headers.get("content-type", "").startswith(
            "text/event-stream"
        )

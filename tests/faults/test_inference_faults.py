"""The inference server killed under a deployment: predict answers 503 with Retry-After
(never a 500, never a hang), and answers again once the server is back, loading the
deployed model anew. Embedded (`tunery serve` restarts its inference child) and, where
Postgres and Redis are reachable, as separate processes (the test restarts it).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import backends, live
from tests.support.faults import child_pids, wait_inference_up

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture
def server(
    backend: backends.Backend, tmp_path: Path, tiny_models: Path
) -> Iterator[live.LiveServer]:
    with live.for_backend(backend, tmp_path / "data", tiny_models) as srv:
        yield srv


def kill_inference(server: live.LiveServer) -> None:
    if "inference" in server.procs:
        server.kill("inference")
        return
    (pid,) = child_pids(server.procs["serve"].pid, b"inference")
    os.kill(pid, signal.SIGKILL)


def test_predict_answers_503_while_the_inference_server_is_down(
    server: live.LiveServer,
) -> None:
    with server.client(timeout=30) as client:
        wait_inference_up(client)
        created = client.post("/v1/deployments", json={"model": "tiny-bert"})
        assert created.status_code == 200, created.text
        dep = live.wait_for(client, f"/v1/deployments/{created.json()['id']}", {"ready", "failed"})
        assert dep["status"] == "ready", dep
        path = f"/v1/deployments/{dep['id']}/predict"
        body = {"inputs": ["the movie was great", "the film was awful"]}
        first = client.post(path, json=body)
        assert first.status_code == 200, first.text

        kill_inference(server)
        down = client.post(path, json=body)
        assert down.status_code == 503, down.text
        assert int(down.headers["retry-after"]) >= 1
        error = down.json()["error"]
        assert error["type"] == "service_unavailable" and "inference server" in error["message"]

        if "inference" in server.procs:  # distributed: the operator (here, the test) restarts it
            server.restart("inference")
        answers: list[httpx.Response] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answers.append(client.post(path, json=body))
            if answers[-1].status_code == 200:
                break
            time.sleep(0.5)
        assert answers[-1].status_code == 200, (answers[-1].text, server.log_tail())
        # a bare base's classification head is drawn anew at each load: same shape only
        again, before = answers[-1].json()["predictions"], first.json()["predictions"]
        assert [set(p["scores"]) for p in again] == [set(p["scores"]) for p in before]
        for answer in answers[:-1]:  # until then: 503 with Retry-After, never a 500
            assert answer.status_code == 503, answer.text
            assert answer.headers.get("retry-after"), answer.headers
        assert client.get(f"/v1/deployments/{dep['id']}").json()["status"] == "ready"

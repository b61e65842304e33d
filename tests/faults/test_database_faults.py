"""Postgres restarted under a running stack (a private cluster: initdb into a temporary
folder, on a free port; stopped with `-m immediate`, which cuts every connection like a
crash). While it is down, API requests fail cleanly (503 with Retry-After and a message,
never a 500 or a traceback) and /readyz says so; once it is back, the API and the worker
reconnect on their own: requests succeed again, and the job that was training carries on
under its lease and succeeds in its first attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import backends, live
from tests.support.faults import (
    FAST,
    attempts_started,
    create_job,
    events,
    job_body,
    upload,
    wait_job,
)
from tests.support.services import (
    PrivatePostgres,
    private_postgres,
    private_postgres_available,
    private_redis,
    redis_available,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.skipif(
        private_postgres_available() is not None,
        reason=f"no private Postgres cluster: {private_postgres_available()}",
    ),
]

OUTAGE_SECONDS = 3.0  # shorter than the lease (6 s): the worker keeps the job


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    if redis_available():
        with private_redis(tmp_path / "redis") as server:
            yield server.url
    elif backends.redis_reachable():
        yield backends.REDIS_URL
    else:
        pytest.skip("no Redis: neither redis-server nor one on 127.0.0.1:6379")


def test_postgres_restarted_requests_fail_cleanly_then_succeed(
    postgres: PrivatePostgres, broker: str, tmp_path: Path, tiny_models: Path, training_file: Path
) -> None:
    with (
        live.distributed(tmp_path / "data", tiny_models, postgres.url, broker, **FAST) as server,
        server.client(timeout=30) as client,
    ):
        file_id = upload(client, training_file)
        job_id = create_job(client, job_body(file_id, epochs=24))
        wait_job(client, job_id, lambda job: job["progress"].get("step", 0) >= 1, server)

        # requests keep arriving, in flight while the database goes away and comes back
        answers: list[tuple[float, str, httpx.Response]] = []
        stop = threading.Event()

        def traffic() -> None:
            with server.client(timeout=30) as own:
                while not stop.is_set():
                    for path in (f"/v1/fine_tuning/jobs/{job_id}", "/v1/files", "/readyz"):
                        answers.append((time.monotonic(), path, own.get(path)))
                    files = {"file": ("more.jsonl", training_file.read_bytes())}
                    answers.append((time.monotonic(), "upload", own.post("/v1/files", files=files)))

        thread = threading.Thread(target=traffic)
        thread.start()
        time.sleep(0.5)
        postgres.stop("immediate")
        time.sleep(OUTAGE_SECONDS)
        postgres.start()
        back_at = time.monotonic()
        # the first requests after the restart may still meet a dead pooled connection
        time.sleep(3)
        stop.set()
        thread.join()

        failed = [(path, r) for _, path, r in answers if r.status_code != 200]
        assert failed, "no request met the outage"
        for path, response in failed:
            assert response.status_code == 503, (path, response.status_code, response.text)
            if path == "/readyz":  # the probe says which dependency is down
                assert response.json()["checks"]["database"] != "ok", response.text
                continue
            assert response.headers.get("retry-after"), (path, response.headers)
            error = response.json()["error"]
            assert error["type"] == "service_unavailable", error
            assert "database" in error["message"] and "Traceback" not in error["message"]
        late = [r for at, _, r in answers if at > back_at + 2]
        assert late and all(r.status_code == 200 for r in late), [r.text for r in late]

        # and afterwards everything works: reads, writes, the job; an upload that failed
        # left no file behind
        assert client.get("/readyz").status_code == 200
        uploaded = 1 + sum(path == "upload" and r.status_code == 200 for _, path, r in answers)
        upload(client, training_file)
        assert len(client.get("/v1/files").json()["data"]) == uploaded + 1
        done = wait_job(client, job_id, lambda job: job["status"] == "succeeded", server)
        assert done["attempt"] == 1, done
        assert attempts_started(client, job_id) == 1, events(client, job_id)
        # the worker did meet the outage mid-job, and rode it out
        worker_log = server.logs["worker"].read_text(errors="replace")
        assert "database away while supervising" in worker_log, server.log_tail()
        assert "carries on" in worker_log

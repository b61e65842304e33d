"""The broker only carries wake-ups; the database holds the jobs. Against live api and
worker processes (no inference server: nothing here serves a model) on a private
redis-server (started here on a free port, without persistence: a restart wipes it) and the
test's database (SQLite, and Postgres where reachable):

- Redis restarted empty while one job runs and others wait: within 60 s the reconciler
  sends every waiting job to the workers again from the database (also one created while
  Redis was down); the running one carries on; each runs once and succeeds.
- A job that runs longer than the broker's visibility timeout is delivered again to an
  idle worker, which finds the claim taken and drops it: the job runs exactly once.

And in process, the reconciler's broker watch on the filesystem broker (the embedded one):
its marker gone, every waiting job is sent again at once; present, nothing is.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis as redis_client
from fastapi.testclient import TestClient

from app.broker import BrokerWatch
from app.jobs.reconciler import Reconciler
from app.main import create_app
from app.settings import Settings
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
from tests.support.services import PrivateRedis, private_redis, redis_available

pytestmark = pytest.mark.faults
needs_redis_server = pytest.mark.skipif(
    not redis_available(), reason="redis-server is not installed"
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as server:
        yield server


@contextmanager
def stack(
    backend: backends.Backend, tmp_path: Path, models: Path, broker: str, **env: str
) -> Iterator[live.LiveServer]:
    """api and worker processes on the test's database and the given broker (no inference
    server: these tests train and never serve)."""
    if backend.name == "sqlite":
        url = f"sqlite:///{tmp_path / 'tunery.db'}"
        with live.distributed(
            tmp_path / "data", models, url, broker, live.WITHOUT_INFERENCE, **env
        ) as server:
            yield server
    else:
        with (
            backends.fresh_postgres_database() as url,
            live.distributed(
                tmp_path / "data", models, url, broker, live.WITHOUT_INFERENCE, **env
            ) as server,
        ):
            yield server


def queued_messages(redis: PrivateRedis, queue: str) -> int:
    client = redis_client.Redis.from_url(redis.url, socket_timeout=2)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


@pytest.mark.e2e
@needs_redis_server
def test_redis_restarted_empty_loses_no_job(
    backend: backends.Backend,
    tmp_path: Path,
    tiny_models: Path,
    training_file: Path,
    redis: PrivateRedis,
) -> None:
    with (
        stack(backend, tmp_path, tiny_models, redis.url, **FAST) as server,
        server.client() as client,
    ):
        queue = server.env["TUNERY_QUEUE"]
        file_id = upload(client, training_file)
        running = create_job(client, job_body(file_id, epochs=16))
        wait_job(client, running, lambda job: job["progress"].get("step", 0) >= 1, server)
        waiting = [create_job(client, job_body(file_id)) for _ in range(2)]
        deadline = time.monotonic() + 10
        while queued_messages(redis, queue) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queued_messages(redis, queue) == 2  # the waiting jobs' wake-ups

        redis.stop()
        # created while the broker is down: the row is the truth, the wake-up fails
        waiting.append(create_job(client, job_body(file_id)))
        redis.start()
        wiped_at = time.monotonic()
        assert redis.keys() == []

        # every waiting job is sent to the workers again, from the database
        for job_id in waiting:
            wait_job(
                client,
                job_id,
                lambda job: (
                    job["status"] != "validating_files"
                    or any("sent to the workers again" in m for m in events(client, job["id"]))
                ),
                server,
                timeout=60,
            )
        assert time.monotonic() - wiped_at < 60

        for job_id in [running, *waiting]:
            done = wait_job(client, job_id, lambda job: job["status"] == "succeeded", server)
            assert done["attempt"] == 1, done
            assert attempts_started(client, job_id) == 1, events(client, job_id)
        assert not any("stopped answering" in m for m in events(client, running))


@pytest.mark.e2e
@needs_redis_server
def test_a_job_longer_than_the_visibility_timeout_runs_once(
    backend: backends.Backend,
    tmp_path: Path,
    tiny_models: Path,
    training_file: Path,
    redis: PrivateRedis,
) -> None:
    visibility = 2
    with (
        stack(
            backend,
            tmp_path,
            tiny_models,
            redis.url,
            TUNERY_BROKER_VISIBILITY_TIMEOUT=str(visibility),
            **FAST,
        ) as server,
        server.client() as client,
    ):
        server.start("worker-2", ["worker", "--loglevel", "INFO"])  # an idle worker
        file_id = upload(client, training_file)
        started = time.monotonic()
        job_id = create_job(client, job_body(file_id, epochs=16))
        done = wait_job(client, job_id, lambda job: job["status"] == "succeeded", server)
        assert time.monotonic() - started > 4 * visibility, "the job was not long enough"
        assert done["attempt"] == 1
        assert attempts_started(client, job_id) == 1, events(client, job_id)

    # the message was delivered again past the visibility timeout, and dropped
    logs = "".join(path.read_text(errors="replace") for path in server.logs.values())
    received = re.findall(r"Task tunery\.run_job\[([0-9a-f-]+)\] received", logs)
    assert len(received) >= 2 and len(set(received)) == 1, received
    assert "'not-claimed'" in logs


def test_a_broker_that_lost_its_marker_gets_every_waiting_job_again(
    tmp_path: Path, tiny_models: Path, migrated_sqlite_url: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=migrated_sqlite_url, models_dir=tiny_models
    )
    app = create_app(settings, reconciler=False)
    sent: list[str] = []
    app.state.enqueue = sent.append
    rows = "".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(12))
    with TestClient(app) as client:
        file_id = client.post("/v1/files", files={"file": ("t.jsonl", rows.encode())}).json()["id"]
        body = {"model": "tiny-bert", "training_file": file_id}
        jobs = [client.post("/v1/fine_tuning/jobs", json=body).json()["id"] for _ in range(3)]
        assert sent == jobs  # each enqueued once, at creation
        watch = BrokerWatch(settings)
        reconciler = Reconciler(
            app.state.sessionmaker, sent.append, 1.0, requeue_after_seconds=3600, broker=watch
        )
        # a broker the API never marked: it may have lost anything, all waiting jobs go again
        assert not watch.intact()
        assert sorted(reconciler.run_once()) == sorted(jobs)
        assert watch.intact()
        assert reconciler.run_once() == []  # intact, and every job was sent just now
        watch.marker.unlink()  # the broker's folder was wiped
        assert sorted(reconciler.run_once()) == sorted(jobs)
        assert len(sent) == 3 * len(jobs)
        for job_id in jobs:
            messages = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
            resent = [m for m in messages if "sent to the workers again" in m["message"]]
            assert len(resent) == 2

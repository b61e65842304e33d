"""GET /metrics: request latency by route, and the state read at scrape time from the real
database and broker (SQLite + the filesystem broker always; Postgres + Redis when reachable).
Inference latency and batch sizes after a real predict are checked in tests/e2e."""

from __future__ import annotations

import os
import re
import stat
import time
import uuid
from pathlib import Path

import pytest

from app.observability import GpuProbe, _inputs_in, parse_nvidia_smi
from app.settings import Settings
from app.tables import JobMetricRow, JobRow
from tests.app.conftest import Api, upload_text
from tests.support import backends
from tests.support.data import sentiment_rows


def scrape(api: Api) -> str:
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def make_job(api: Api) -> str:
    rows = "".join(
        f'{{"text": "{r["text"]}", "label": "{r["label"]}"}}\n' for r in sentiment_rows(24)
    )
    file = upload_text(api, "train.jsonl", rows)
    response = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_request_latency_by_route_template(api: Api) -> None:
    api.client.get("/v1/fine_tuning/jobs/ftjob-missing")
    api.client.get("/v1/fine_tuning/jobs/ftjob-other")
    api.client.get("/no/such/path")
    text = scrape(api)
    route = "/v1/fine_tuning/jobs/{job_id}"
    count = sample(
        text, "tunery_http_request_duration_seconds_count", route=route, status="404", method="GET"
    )
    assert count == 2  # one series for the route, not one per id
    assert "ftjob-missing" not in text
    assert sample(text, "tunery_http_request_duration_seconds_count", route="<unmatched>") == 1


def test_jobs_by_status_and_training_throughput(api: Api) -> None:
    text = scrape(api)
    assert sample(text, "tunery_jobs", status="queued") == 0
    assert sample(text, "tunery_jobs", status="running") == 0
    assert sample(text, "tunery_up", component="database") == 1

    waiting, running = make_job(api), make_job(api)
    waiting_status = api.client.get(f"/v1/fine_tuning/jobs/{waiting}").json()["status"]
    make_session = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with make_session() as session:
        row = session.get(JobRow, running)
        assert row is not None
        row.status = "running"
        row.started_at = int(time.time()) - 10
        row.progress = {"step": 5, "total_steps": 20, "epoch": 0.5}
        session.add(
            JobMetricRow(
                job_id=running,
                kind="train",
                step=5,
                epoch=0.5,
                values={"train_loss": 0.7, "tokens_per_second": 1234.5},
            )
        )
        session.commit()

    text = scrape(api)
    assert sample(text, "tunery_jobs", status=waiting_status) == 1
    assert sample(text, "tunery_jobs", status="running") == 1
    assert sample(text, "tunery_training_progress_ratio", job_id=running) == 0.25
    assert sample(text, "tunery_training_tokens_per_second", job_id=running) == 1234.5
    steps_per_second = sample(text, "tunery_training_steps_per_second", job_id=running)
    assert steps_per_second is not None and 0.2 < steps_per_second <= 0.5
    assert sample(text, "tunery_training_progress_ratio", job_id=waiting) is None
    assert sample(text, "tunery_trained_tokens_total") == 0
    # nothing listens at the inference URL of this fixture
    assert sample(text, "tunery_up", component="inference") == 0


def test_queue_depth_counts_filesystem_broker_messages(api: Api) -> None:
    from app.broker import enqueue_job

    assert api.settings.broker_url.startswith("filesystem")
    assert sample(scrape(api), "tunery_queue_depth", queue=api.settings.queue) == 0
    celery = api.client.app.state.celery  # type: ignore[attr-defined]
    enqueue_job(celery, "ftjob-a")
    enqueue_job(celery, "ftjob-b")
    text = scrape(api)
    assert sample(text, "tunery_queue_depth", queue=api.settings.queue) == 2
    assert sample(text, "tunery_up", component="broker") == 1


@pytest.mark.skipif(not backends.redis_reachable(), reason="Redis not reachable on 127.0.0.1")
def test_queue_depth_on_redis(tmp_path: Path, tiny_models: Path, migrated_sqlite_url: str) -> None:
    import redis
    from fastapi.testclient import TestClient

    from app.broker import enqueue_job
    from app.main import create_app

    queue = f"tunery-metrics-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_sqlite_url,
        models_dir=tiny_models,
        broker_url=backends.REDIS_URL,
        queue=queue,
        inference_url="http://127.0.0.1:9",
    )
    app = create_app(settings, reconciler=False)
    try:
        with TestClient(app) as client:
            enqueue_job(app.state.celery, "ftjob-a")
            enqueue_job(app.state.celery, "ftjob-b")
            enqueue_job(app.state.celery, "ftjob-c")
            text = client.get("/metrics").text
            assert sample(text, "tunery_queue_depth", queue=queue) == 3
    finally:
        redis.Redis.from_url(backends.REDIS_URL).delete(queue)


def test_batch_size_is_read_from_each_kind_of_predict_body() -> None:
    assert _inputs_in(b'{"inputs": ["a", "b", "c"]}') == 3
    assert _inputs_in(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}') == 1
    assert _inputs_in(b'{"model": "m", "prompt": ["a", "b"]}') == 2
    assert _inputs_in(b'{"model": "m", "prompt": "a"}') == 1
    assert _inputs_in(b"not json") is None


def test_gpu_memory_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = (
        "0, NVIDIA H100 80GB HBM3, 1024, 81559, 37\n1, NVIDIA H100 80GB HBM3, [N/A], 81559, 0\n"
    )
    assert parse_nvidia_smi(output)[0] == ["0", "NVIDIA H100 80GB HBM3", "1024", "81559", "37"]
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    families = {m.name: m for m in GpuProbe().collect()}
    used = {s.labels["gpu"]: s.value for s in families["tunery_gpu_memory_used_bytes"].samples}
    assert used == {"0": 1024 * 1024 * 1024}  # GPU 1 reports N/A: left out, not zero
    assert families["tunery_gpu_utilization_ratio"].samples[0].value == pytest.approx(0.37)


def test_no_gpu_no_gpu_metrics(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert list(GpuProbe().collect()) == []

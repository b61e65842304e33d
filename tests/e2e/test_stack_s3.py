"""The multi-host stack, natively: `tunery api`, `tunery worker` and `tunery inference` as
separate processes on Postgres and Redis, with artifacts on S3 (moto's S3 server over HTTP).

Each process gets its own TUNERY_DATA_DIR, as if it ran on its own host: datasets, checkpoints,
trained adapters and merged exports can only travel through the bucket. Drives upload -> job
-> succeeded -> deploy -> predict -> download (adapter and merged) -> /metrics.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import backends, live
from tests.support.data import sentiment_rows, write_jsonl

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (backends.postgres_reachable() and backends.redis_reachable()),
        reason="the stack test needs Postgres and Redis on 127.0.0.1",
    ),
]

BUCKET = "tunery"


@pytest.fixture
def s3() -> Iterator[tuple[str, object]]:
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    pytest.importorskip("s3fs", reason="s3fs is in the s3 and dev extras")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = live.free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture
def stack(
    s3: tuple[str, object], tmp_path: Path, tiny_models: Path
) -> Iterator[tuple[live.LiveServer, list[live.LiveServer]]]:
    endpoint, _ = s3
    api_port, inference_port = live.free_port(), live.free_port()
    with backends.fresh_postgres_database() as database_url:
        shared = {
            "TUNERY_DATABASE_URL": database_url,
            "TUNERY_BROKER_URL": backends.REDIS_URL,
            "TUNERY_QUEUE": f"tunery-stack-{uuid.uuid4().hex[:8]}",
            "TUNERY_INFERENCE_URL": f"http://127.0.0.1:{inference_port}",
            "TUNERY_STORAGE_URL": f"s3://{BUCKET}/artifacts",
            # what docker-compose.yml sets for MinIO
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        hosts: dict[str, live.LiveServer] = {}
        for name in ("api", "worker", "inference"):
            data_dir = tmp_path / f"host-{name}"
            data_dir.mkdir()
            env = live._base_env(data_dir, tiny_models) | shared
            hosts[name] = live.LiveServer(f"http://127.0.0.1:{api_port}", data_dir, env)
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env=hosts["api"].env,
            check=True,
            capture_output=True,
        )
        hosts["api"].start("api", ["api", "--port", str(api_port)])
        hosts["worker"].start("worker", ["worker", "--loglevel", "INFO"])
        hosts["inference"].start("inference", ["inference", "--port", str(inference_port)])
        try:
            hosts["api"].wait_ready(f"http://127.0.0.1:{api_port}/healthz")
            hosts["inference"].wait_ready(f"http://127.0.0.1:{inference_port}/healthz")
            yield hosts["api"], list(hosts.values())
        finally:
            for host in hosts.values():
                host.stop_all()


def logs(hosts: list[live.LiveServer]) -> str:
    return "\n".join(h.log_tail() for h in hosts)


def test_job_end_to_end_on_s3(
    stack: tuple[live.LiveServer, list[live.LiveServer]], s3: tuple[str, object], tmp_path: Path
) -> None:
    api, hosts = stack
    _, bucket = s3
    rows = sentiment_rows(48)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with api.client(timeout=300) as client:
        with train.open("rb") as fh:
            uploaded = client.post("/v1/files", files={"file": (train.name, fh)})
        assert uploaded.status_code == 200, uploaded.text
        file = uploaded.json()
        assert file["status"] == "processed" and file["stats"]["rows"] == 48, file

        created = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "tiny-bert",
                "training_file": file["id"],
                "seed": 5,
                "suffix": "s3",
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}},
                },
            },
        )
        assert created.status_code == 200, created.text
        try:
            job = live.wait_for(
                client,
                f"/v1/fine_tuning/jobs/{created.json()['id']}",
                {"succeeded", "failed", "cancelled"},
            )
        except TimeoutError:
            raise AssertionError(logs(hosts)) from None
        assert job["status"] == "succeeded", (job, logs(hosts))
        model = job["fine_tuned_model"]

        deployed = client.post("/v1/deployments", json={"model": model})
        assert deployed.status_code == 200, deployed.text
        dep = live.wait_for(client, f"/v1/deployments/{deployed.json()['id']}", {"ready", "failed"})
        assert dep["status"] == "ready", (dep, logs(hosts))
        texts = [r["text"] for r in rows[:4]]
        predicted = client.post(f"/v1/deployments/{dep['id']}/predict", json={"inputs": texts})
        assert predicted.status_code == 200, predicted.text
        labels = {p["label"] for p in predicted.json()["predictions"]}
        assert labels <= {"positive", "negative"}

        for fmt, weights in (
            ("adapter", "adapter_model.safetensors"),
            ("merged", "model.safetensors"),
        ):
            download = client.get(f"/v1/models/{model}/content", params={"format": fmt})
            assert download.status_code == 200, download.text
            with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
                names = tar.getnames()
            assert any(n.endswith(f"/{weights}") for n in names), (fmt, names)
            assert any(n.endswith("/tunery.json") for n in names), names

        metrics = httpx.get(f"{api.base_url}/metrics", timeout=30).text
    assert 'tunery_jobs{status="succeeded"} 1.0' in metrics
    assert 'tunery_up{component="broker"} 1.0' in metrics
    assert "tunery_inference_models_loaded" in metrics
    assert (
        'tunery_inference_batch_size_count{route="/v1/deployments/{dep_id}/predict"} 1.0' in metrics
    )

    keys = [
        obj["Key"]
        for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)  # type: ignore[attr-defined]
        for obj in page.get("Contents", [])
    ]
    assert any(k.startswith(f"artifacts/files/{file['id']}/") for k in keys), keys
    assert any(
        k.startswith(f"artifacts/models/{job['id']}/") and k.endswith("adapter_model.safetensors")
        for k in keys
    ), keys
    assert any("merged" in k and k.endswith("model.safetensors") for k in keys), keys
    assert not [k for k in keys if ".partial-" in k], keys
    # no host kept an artifact store of its own: everything went through the bucket
    for host in hosts:
        assert not (host.data_dir / "artifacts").exists(), host.data_dir

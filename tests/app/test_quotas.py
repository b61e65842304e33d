"""Per-project quotas (unfinished jobs, stored bytes) and the per-key rate limit: 429s."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from app.auth import Principal, RateLimiter, create_key
from app.failures import APIError
from tests.app.conftest import Api

CHAT = "\n".join(
    json.dumps({"prompt": f"question {i}", "completion": f" answer {i}"}) for i in range(12)
)


def keys(api: Api, *projects: str) -> list[dict[str, str]]:
    api.client.app.state.keys.cache_seconds = 0  # type: ignore[attr-defined]
    made = []
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        for project in projects:
            made.append({"Authorization": f"Bearer {create_key(session, project)[1]}"})
        session.commit()
    return made


def upload(api: Api, headers: dict[str, str], text: str = CHAT) -> tuple[int, dict]:
    response = api.client.post(
        "/v1/files",
        files={"file": ("train.jsonl", text.encode())},
        data={"purpose": "fine-tune"},
        headers=headers,
    )
    return response.status_code, response.json()


def create_job(api: Api, headers: dict[str, str], file_id: str) -> Any:
    return api.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": file_id},
        headers=headers,
    )


def test_concurrent_jobs_quota_counts_unfinished_jobs_per_project(api: Api) -> None:
    api.client.app.state.settings.quota_concurrent_jobs = 2  # type: ignore[attr-defined]
    alpha, beta = keys(api, "alpha", "beta")
    status, file_a = upload(api, alpha)
    assert status == 200
    first = create_job(api, alpha, file_a["id"])
    assert first.status_code == 200 and create_job(api, alpha, file_a["id"]).status_code == 200

    refused = create_job(api, alpha, file_a["id"])
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "quota is 2" in error["message"] and "TUNERY_QUOTA_CONCURRENT_JOBS" in error["message"]
    assert len(api.enqueued) == 2  # the refused one was never queued

    # another project has its own quota
    status, file_b = upload(api, beta)
    assert status == 200 and create_job(api, beta, file_b["id"]).status_code == 200

    # a finished (here: cancelled) job frees its place
    cancel = api.client.post(f"/v1/fine_tuning/jobs/{first.json()['id']}/cancel", headers=alpha)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert create_job(api, alpha, file_a["id"]).status_code == 200


def test_storage_quota_refuses_an_upload_that_would_pass_it(api: Api) -> None:
    size = len(CHAT.encode())
    api.client.app.state.settings.quota_storage_bytes = size + size // 2  # type: ignore[attr-defined]
    alpha, beta = keys(api, "alpha", "beta")
    status, first = upload(api, alpha)
    assert status == 200 and first["bytes"] == size

    status, body = upload(api, alpha)
    assert status == 429, body
    assert body["error"]["code"] == "quota_exceeded" and body["error"]["param"] == "file"
    assert "TUNERY_QUOTA_STORAGE_BYTES" in body["error"]["message"]
    listed = api.client.get("/v1/files", headers=alpha).json()["data"]
    assert [f["id"] for f in listed] == [first["id"]]  # nothing half-written is visible
    stored = sorted(p.name for p in (api.settings.data_dir / "artifacts" / "files").iterdir())
    assert stored == [first["id"]]  # the refused upload's bytes were removed from the store

    assert upload(api, beta)[0] == 200  # another project's bytes are its own
    assert api.client.delete(f"/v1/files/{first['id']}", headers=alpha).status_code == 200
    assert upload(api, alpha)[0] == 200  # deleting frees the room


def test_rate_limit_per_key_answers_429_with_retry_after(api: Api) -> None:
    api.client.app.state.settings.rate_limit_per_minute = 3  # type: ignore[attr-defined]
    # no key exists yet: the loopback single-user mode has no key to limit
    for _ in range(5):
        assert api.client.get("/v1/models").status_code == 200
    alpha, beta = keys(api, "alpha", "beta")
    for _ in range(3):
        assert api.client.get("/v1/models", headers=alpha).status_code == 200
    limited = api.client.get("/v1/models", headers=alpha)
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert "TUNERY_RATE_LIMIT_PER_MINUTE" in limited.json()["error"]["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 20  # one token comes back in 20 s
    assert api.client.get("/v1/models", headers=beta).status_code == 200  # its own bucket


def test_token_bucket_refills_at_its_rate() -> None:
    limiter = RateLimiter(60)  # a burst of 60, then one a second
    who = Principal("proj-x", "key-x")
    for _ in range(60):
        limiter.take(who)
    with pytest.raises(APIError) as refused:
        limiter.take(who)
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    time.sleep(1.05)
    limiter.take(who)
    RateLimiter(0).take(who)  # 0 = off
    for _ in range(100):
        RateLimiter(0).take(who)

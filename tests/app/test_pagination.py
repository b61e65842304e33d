"""Every keyset list (app/pagination.py) pages on with `after` and has one rule for a cursor
that names no item of the list: 400 `invalid_cursor` naming `after`, never a page that
silently starts over."""

from __future__ import annotations

import json

import pytest

from tests.app.conftest import Api, upload_text
from tests.app.test_tenancy import Tenants, bearer, tenants

__all__ = ["tenants"]  # the fixture, for the cross-project case

ROWS = "".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(10))


def create_jobs(api: Api, count: int) -> list[str]:
    api.settings.quota_concurrent_jobs = max(count, api.settings.quota_concurrent_jobs)
    file_id = upload_text(api, "train.jsonl", ROWS)["id"]
    body = {"model": "tiny-llama", "training_file": file_id}
    ids = []
    for _ in range(count):
        response = api.client.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def page_through(api: Api, path: str, limit: int, **params: str) -> list[str]:
    seen: list[str] = []
    after: str | None = None
    while True:
        query: dict[str, str | int] = {"limit": limit, **params}
        if after:
            query["after"] = after
        page = api.client.get(path, params=query).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return seen
        after = page["last_id"]


def test_lists_page_through_every_item_once_in_order(api: Api) -> None:
    jobs = create_jobs(api, 5)
    assert page_through(api, "/v1/fine_tuning/jobs", 2) == jobs[::-1]
    files = [upload_text(api, f"f{i}.jsonl", ROWS)["id"] for i in range(3)]
    listed = page_through(api, "/v1/files", 1, order="asc")
    assert listed[-3:] == files and len(set(listed)) == len(listed)
    api.client.post(f"/v1/fine_tuning/jobs/{jobs[0]}/cancel")
    events = page_through(api, f"/v1/fine_tuning/jobs/{jobs[0]}/events", 1)
    assert len(events) == len(set(events)) >= 2


def test_a_deleted_file_still_anchors_the_next_page(api: Api) -> None:
    files = [upload_text(api, f"f{i}.jsonl", ROWS)["id"] for i in range(3)]
    first = api.client.get("/v1/files", params={"limit": 1}).json()
    assert first["last_id"] == files[-1]
    assert api.client.delete(f"/v1/files/{files[-1]}").status_code == 200
    rest = api.client.get("/v1/files", params={"after": files[-1]}).json()
    assert [f["id"] for f in rest["data"]] == files[-2::-1]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job}/events",
        "/v1/fine_tuning/jobs/{job}/checkpoints",
        "/v1/evaluations",
    ],
)
def test_an_unknown_cursor_is_a_400_naming_after(api: Api, path: str) -> None:
    (job,) = create_jobs(api, 1)
    response = api.client.get(path.format(job=job), params={"after": "nope-123"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "after" and error["code"] == "invalid_cursor"
    assert "nope-123" in error["message"] and "previous page" in error["message"]


def test_a_cursor_from_another_list_is_unknown_to_this_one(api: Api) -> None:
    first, second = create_jobs(api, 2)
    api.client.post(f"/v1/fine_tuning/jobs/{first}/cancel")
    other_event = api.client.get(f"/v1/fine_tuning/jobs/{first}/events").json()["last_id"]
    response = api.client.get(
        f"/v1/fine_tuning/jobs/{second}/events", params={"after": other_event}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_cursor"
    assert "an event of this job" in response.json()["error"]["message"]


def test_another_projects_id_is_an_unknown_cursor(tenants: Tenants) -> None:
    client, other = tenants.api.client, bearer(tenants.key_b)
    for path, key in (
        ("/v1/files", "file_id"),
        ("/v1/fine_tuning/jobs", "job_id"),
        ("/v1/evaluations", "evaluation_id"),
    ):
        response = client.get(path, params={"after": tenants.ids[key]}, headers=other)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_cursor"

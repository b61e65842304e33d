from __future__ import annotations

import json

from tests.app.conftest import Api, upload_text

ROWS = "".join(
    json.dumps({"text": f"t{i}", "label": "a" if i % 2 else "b"}) + "\n" for i in range(10)
)
CSV_ROWS = "text,label\n" + "".join(f"hello {i},{'xy'[i % 2]}\n" for i in range(10))


def test_upload_retrieve_content_list_delete(api: Api) -> None:
    file = upload_text(api, "train.jsonl", ROWS)
    assert file["object"] == "file" and file["id"].startswith("file-")
    assert file["status"] == "processed" and file["format"] == "classification"
    assert file["bytes"] == len(ROWS.encode())
    assert file["stats"]["labels"] == {"a": 5, "b": 5}

    got = api.client.get(f"/v1/files/{file['id']}").json()
    assert got == file
    assert api.client.get(f"/v1/files/{file['id']}/content").content == ROWS.encode()

    second = upload_text(api, "more.csv", CSV_ROWS)
    assert second["format"] == "classification"
    listing = api.client.get("/v1/files", params={"limit": 1}).json()
    assert listing["object"] == "list" and listing["has_more"] is True
    assert listing["data"][0]["id"] == second["id"]
    rest = api.client.get("/v1/files", params={"limit": 1, "after": second["id"]}).json()
    assert [f["id"] for f in rest["data"]] == [file["id"]] and rest["has_more"] is False

    deleted = api.client.delete(f"/v1/files/{file['id']}").json()
    assert deleted == {"id": file["id"], "object": "file", "deleted": True}
    missing = api.client.get(f"/v1/files/{file['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "file_id"


def test_bad_rows_are_reported_with_line_numbers(api: Api) -> None:
    text = ROWS + '{"text": "no label"}\nnot json\n'
    file = upload_text(api, "bad.jsonl", text)
    assert file["status"] == "error"
    assert [e["line"] for e in file["errors"]] == [11, 12]
    assert file["status_details"] == (
        'line 11: the row\'s keys (text) match no format; expected {"text", "label"}, '
        '{"prompt", "completion"}, {"messages"}, {"input", "preferred_output", '
        '"non_preferred_output"} or {"prompt", "chosen", "rejected"} (and 1 more problem)'
    )


def test_fewer_examples_than_the_minimum_is_an_error(api: Api) -> None:
    assert api.settings.min_training_examples == 10  # OpenAI's minimum, the default
    file = upload_text(api, "small.jsonl", "".join(ROWS.splitlines(keepends=True)[:9]))
    assert file["status"] == "error"
    assert file["errors"] == [
        {
            "line": 0,
            "message": "the file has 9 examples; fine-tuning needs at least 10: add examples",
        }
    ]
    assert file["status_details"] == file["errors"][0]["message"]
    api.settings.min_training_examples = 3  # TUNERY_MIN_TRAINING_EXAMPLES
    again = upload_text(api, "small.jsonl", "".join(ROWS.splitlines(keepends=True)[:9]))
    assert again["status"] == "processed", again


def test_long_examples_are_a_warning_not_an_error(api: Api) -> None:
    rows = [{"prompt": f"question {i}", "completion": "answer"} for i in range(9)]
    rows.append({"prompt": "word " * 400, "completion": "answer"})
    file = upload_text(api, "long.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert file["status"] == "processed" and file["status_details"] is None
    assert file["stats"]["long_examples"]["lines"] == [10]
    (warning,) = file["warnings"]
    assert warning.startswith("1 example is estimated over 256 tokens") and "line 10" in warning


def test_path_segments_are_stripped_from_filenames(api: Api) -> None:
    file = upload_text(api, "../../etc/passwd.jsonl", ROWS)
    assert file["filename"] == "passwd.jsonl"


def test_oversize_upload_is_413_and_leaves_nothing(api: Api) -> None:
    big = b'{"text": "x", "label": "a"}\n' * 5000  # over the fixture's 64 KiB limit
    response = api.client.post(
        "/v1/files", files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert api.client.get("/v1/files").json()["data"] == []
    artifacts = api.settings.data_dir / "artifacts" / "files"
    assert not artifacts.exists() or not any(p.is_file() for p in artifacts.rglob("*"))


def test_file_used_by_an_unfinished_job_cannot_be_deleted(api: Api) -> None:
    file = upload_text(api, "train.jsonl", ROWS)
    job = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
    ).json()
    response = api.client.delete(f"/v1/files/{file['id']}")
    assert response.status_code == 409 and job["id"] in response.json()["error"]["message"]
    assert api.client.get(f"/v1/files/{file['id']}/content").content == ROWS.encode()


def test_unknown_purpose_is_400(api: Api) -> None:
    response = api.client.post(
        "/v1/files", files={"file": ("a.jsonl", ROWS.encode())}, data={"purpose": "batch"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"

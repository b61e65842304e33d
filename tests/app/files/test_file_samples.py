"""GET /v1/files/{file_id}/samples and .../samples/{index}/content: a few examples per class
of an image or audio archive, and each one's bytes with its media type, scoped to the
caller's project (tests/app/test_tenancy.py walks both routes with another project's key)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from app.files import service
from app.storage import ArtifactStore
from app.tables import FileRow
from task_plugins.media.archive import ArchiveLimits
from tests.app.conftest import Api, upload_text
from tests.support.media import digit_images, folder_zip, metadata_zip, tones


def test_an_image_archive_lists_a_few_per_class_and_serves_each(api: Api, tmp_path: Path) -> None:
    pictures = digit_images(6, (3, 8))
    file = upload_text(api, "d.zip", folder_zip(tmp_path / "d.zip", pictures).read_bytes())
    assert file["samples"] is True  # the file object says the samples route shows it
    listed = api.client.get(f"/v1/files/{file['id']}/samples", params={"per_class": 2})
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["format"] == "image-classification"
    assert [(s["label"], s["file"]) for s in body["data"]] == [
        ("3", "3/0.png"),
        ("3", "3/1.png"),
        ("8", "8/0.png"),
        ("8", "8/1.png"),
    ]
    for sample in body["data"]:
        assert sample["content_type"] == "image/png"
        got = api.client.get(f"/v1/files/{file['id']}/samples/{sample['index']}/content")
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/png"
        assert got.headers["x-content-type-options"] == "nosniff"
        label, name = sample["file"].split("/")
        assert got.content == pictures[label][int(name.removesuffix(".png"))]


def test_an_audio_archive_in_the_metadata_layout(api: Api, tmp_path: Path) -> None:
    sounds = tones(5, ("low", "high"), seconds=0.1)
    archive = metadata_zip(tmp_path / "t.zip", sounds, suffix=".wav")
    file = upload_text(api, "t.zip", archive.read_bytes())
    assert file["status"] == "processed", file
    body = api.client.get(f"/v1/files/{file['id']}/samples").json()
    assert {s["label"] for s in body["data"]} == {"low", "high"}
    assert len(body["data"]) == 10  # fewer than the default 6 per class exist
    first = body["data"][0]
    got = api.client.get(f"/v1/files/{file['id']}/samples/{first['index']}/content")
    assert got.headers["content-type"] == "audio/wav"
    with zipfile.ZipFile(archive) as opened:
        assert got.content == opened.read(first["file"])


def test_what_is_not_an_archive_or_not_an_example_is_refused(api: Api, tmp_path: Path) -> None:
    rows = "".join(f'{{"text": "row {i}", "label": "a{i % 2}"}}\n' for i in range(12))
    text_file = upload_text(api, "t.jsonl", rows)
    assert text_file["samples"] is False
    refused = api.client.get(f"/v1/files/{text_file['id']}/samples")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_file_format" and error["param"] == "file_id"
    assert "image-classification and audio-classification archives" in error["message"]

    archive = folder_zip(tmp_path / "d.zip", digit_images(5, (1, 2)))
    file = upload_text(api, "d.zip", archive.read_bytes())
    missing = api.client.get(f"/v1/files/{file['id']}/samples/10/content")
    assert missing.status_code == 404, missing.text
    assert "10 examples; sample index 10 is not one of them" in missing.json()["error"]["message"]
    negative = api.client.get(f"/v1/files/{file['id']}/samples/-1/content")
    assert negative.status_code == 404, negative.text
    too_many = api.client.get(f"/v1/files/{file['id']}/samples", params={"per_class": 51})
    assert too_many.status_code == 400, too_many.text
    gone = api.client.get("/v1/files/file-nope/samples")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_a_stored_archive_that_turned_hostile_is_not_served(tmp_path: Path) -> None:
    """The routes open the stored zip with the upload's checks: an archive that changed in
    the store, or limits lowered since, are refused, never a member outside the rules."""
    store = ArtifactStore(f"file://{tmp_path / 'store'}", tmp_path / "cache")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        out.writestr("a/1.png", b"x")
        out.writestr(zipfile.ZipInfo("a/../../../etc/passwd.png"), b"x")
    store.write_stream("files/file-1/evil.zip", iter([buffer.getvalue()]))
    row = FileRow(
        id="file-1",
        filename="evil.zip",
        format="image-classification",
        storage_key="files/file-1/evil.zip",
    )
    limits = ArchiveLimits(10, 1 << 30, 1 << 20, 200.0)
    with pytest.raises(service.APIError) as caught:
        service.scan_stored_archive(store, row, limits)
    assert caught.value.status == 409
    assert "climbs out of the archive" in str(caught.value)

"""Zip uploads through POST /v1/files: the report, and hostile archives refused with a 400
that leaves nothing stored."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.app.conftest import Api, upload_text
from tests.support.media import digit_images, folder_zip


def _stored_files(api: Api) -> list[Path]:
    root = api.settings.data_dir
    return [path for path in root.rglob("*") if path.is_file() and "files" in path.parts]


def test_an_image_zip_is_reported_per_class(api: Api, tmp_path: Path) -> None:
    archive = folder_zip(tmp_path / "d.zip", digit_images(5, (4, 7)))
    file = upload_text(api, "d.zip", archive.read_bytes())
    assert file["status"] == "processed", file
    assert file["format"] == "image-classification"
    assert file["stats"]["labels"] == {"4": 5, "7": 5}
    assert file["stats"]["image_sizes"]["4"] == {
        "min_width": 32.0,
        "max_width": 32.0,
        "min_height": 32.0,
        "max_height": 32.0,
    }
    listed = api.client.get("/v1/files").json()["data"]
    assert [f["format"] for f in listed] == ["image-classification"]


def test_problems_are_listed_by_path(api: Api, tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for index, data in enumerate(digit_images(10, (1,))["1"]):
            out.writestr(f"one/{index}.png", data)
        out.writestr("one/broken.jpg", b"\xff\xd8\xff garbage")
    file = upload_text(api, "bad.zip", archive.read_bytes())
    assert file["status"] == "error"
    assert file["errors"][0]["path"] == "one/broken.jpg"
    assert file["status_details"].startswith("one/broken.jpg: unreadable or corrupt image")


def test_a_hostile_archive_is_refused_and_nothing_is_left(api: Api, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("cats/1.png", b"x")
        out.writestr(zipfile.ZipInfo("cats/../../../etc/cron.d/x.png"), b"x")
    response = api.client.post(
        "/v1/files",
        files={"file": ("evil.zip", archive.read_bytes())},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_archive" and error["param"] == "file"
    assert error["message"].startswith("evil.zip: 'cats/../../../etc/cron.d/x.png' climbs out")
    assert _stored_files(api) == []
    assert api.client.get("/v1/files").json()["data"] == []


def test_an_archive_refused_when_the_job_starts_fails_the_job(tmp_path: Path) -> None:
    from app.failures import Failure
    from app.jobs.service import JobFile, check_files_again
    from app.storage import ArtifactStore

    store = ArtifactStore(f"file://{tmp_path / 'store'}", tmp_path / "cache")
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr(zipfile.ZipInfo("/abs/1.png"), b"x")
    store.write_stream("files/file-1/evil.zip", iter([archive.read_bytes()]))
    job_file = JobFile("training_file", "file-1", "files/file-1/evil.zip", "evil.zip")
    with pytest.raises(Failure) as caught:
        check_files_again(store, "image-classification", [job_file])
    assert caught.value.code == "invalid_file" and caught.value.param == "training_file"
    assert "absolute path" in caught.value.message


def test_a_lowered_archive_limit_refuses_an_archive_the_default_takes(
    api: Api, tmp_path: Path, tiny_models: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    archive = folder_zip(tmp_path / "d.zip", digit_images(6, (4, 7)))
    assert upload_text(api, "d.zip", archive.read_bytes())["status"] == "processed"
    strict = Settings(
        data_dir=tmp_path / "strict",
        database_url=api.settings.database_url,  # the same database, already migrated
        models_dir=tiny_models,
        archive_max_entries=5,
    )
    app = create_app(strict, reconciler=False)
    with TestClient(app) as client:
        response = client.post(
            "/v1/files",
            files={"file": ("d.zip", archive.read_bytes())},
            data={"purpose": "fine-tune"},
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_archive"
    assert "12 entries; at most 5 are allowed (TUNERY_ARCHIVE_MAX_ENTRIES)" in error["message"]


def test_a_job_start_checks_a_validated_archive_without_decoding_it_again(
    tmp_path: Path,
) -> None:
    """The upload decoded every picture; the job start only checks the stored size and the zip
    directory. A picture that no longer decodes shows it was not decoded again; a changed size
    sends the archive through the full check, and today's limits still apply."""
    from app.failures import Failure
    from app.jobs.service import JobFile, check_files_again
    from app.settings import Settings
    from app.storage import ArtifactStore

    store = ArtifactStore(f"file://{tmp_path / 'store'}", tmp_path / "cache")
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for label, pictures in digit_images(3, (1, 2)).items():
            for index, data in enumerate(pictures):
                out.writestr(f"{label}/{index}.png", data)
        out.writestr("2/broken.png", b"\x89PNG not really")
    key = "files/file-1/d.zip"
    size = store.write_stream(key, iter([archive.read_bytes()]))

    def job_file(stored_bytes: int) -> JobFile:
        return JobFile(
            "training_file",
            "file-1",
            key,
            "d.zip",
            status="processed",
            format="image-classification",
            bytes=stored_bytes,
        )

    check_files_again(store, "image-classification", [job_file(size)])
    with pytest.raises(Failure) as changed:
        check_files_again(store, "image-classification", [job_file(size - 1)])
    assert changed.value.code == "invalid_file"
    assert "2/broken.png: unreadable or corrupt image" in changed.value.message
    with pytest.raises(Failure) as stricter:
        check_files_again(
            store, "image-classification", [job_file(size)], settings=Settings(
                data_dir=tmp_path, archive_max_entries=3
            )
        )  # fmt: skip
    assert stricter.value.code == "invalid_file"
    assert "at most 3 are allowed" in stricter.value.message
    with pytest.raises(Failure) as wrong_task:
        check_files_again(store, "audio-classification", [job_file(size)])
    assert wrong_task.value.code == "invalid_file_format"

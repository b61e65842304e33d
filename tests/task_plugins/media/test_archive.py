"""Zip uploads of labelled images and sounds: layouts, the report, and hostile archives."""

from __future__ import annotations

import random
import stat
import zipfile
from pathlib import Path

import pytest

from app.settings import Settings
from task_plugins.base import UploadRefused
from task_plugins.media import archive
from task_plugins.media.kind import AUDIO_ARCHIVE, IMAGE_ARCHIVE
from tests.support.media import digit_images, folder_zip, metadata_zip, tones


@pytest.fixture(scope="module")
def digits() -> dict[str, list[bytes]]:
    return digit_images(per_class=3, classes=(0, 1))


def test_folder_layout_under_a_top_folder(tmp_path: Path, digits: dict[str, list[bytes]]) -> None:
    path = folder_zip(tmp_path / "d.zip", digits, top="digits/")
    assert IMAGE_ARCHIVE.claims(path, "d.zip") and not AUDIO_ARCHIVE.claims(path, "d.zip")
    report = IMAGE_ARCHIVE.inspect(path, "d.zip", 20, 1)
    assert report.ok, report.errors
    assert report.format == "image-classification"
    assert report.stats["labels"] == {"0": 3, "1": 3}
    assert report.stats["layout"] == "folders"
    assert report.stats["min_width"] == report.stats["max_height"] == 32
    fmt, rows = IMAGE_ARCHIVE.read(path, "d.zip")
    assert fmt == "image-classification"
    assert rows[0] == {"archive": str(path), "file": "digits/0/0.png", "label": "0", "index": 0}
    assert len(rows) == 6


def test_metadata_layout_jsonl_and_csv(tmp_path: Path, digits: dict[str, list[bytes]]) -> None:
    path = metadata_zip(tmp_path / "m.zip", digits)
    report = IMAGE_ARCHIVE.inspect(path, "m.zip", 20, 1)
    assert report.ok, report.errors
    assert report.stats["layout"] == "metadata"
    assert report.stats["labels"] == {"0": 3, "1": 3}
    csv_path = tmp_path / "c.zip"
    with zipfile.ZipFile(csv_path, "w") as out:
        lines = ["file_name,label"]
        for label, items in digits.items():
            for index, data in enumerate(items):
                out.writestr(f"pics/{label}{index}.png", data)
                lines.append(f"{label}{index}.png,cls{label}")
        out.writestr("pics/metadata.csv", "\n".join(lines) + "\n")
    report = IMAGE_ARCHIVE.inspect(csv_path, "c.zip", 20, 1)
    assert report.ok, report.errors
    assert report.stats["labels"] == {"cls0": 3, "cls1": 3}


def test_problems_are_reported_by_path(tmp_path: Path, digits: dict[str, list[bytes]]) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as out:
        for index, data in enumerate(digits["0"]):
            out.writestr(f"zero/{index}.png", data)
        out.writestr("one/0.png", digits["1"][0])  # a class of one
        out.writestr("zero/broken.png", b"\x89PNG\r\n\x1a\nnot really")
        out.writestr("zero/notes.txt", b"hello")
        out.writestr("two/", b"")  # a label without files
        out.writestr("stray.png", digits["1"][1])
    report = IMAGE_ARCHIVE.inspect(path, "bad.zip", 20, 1)
    assert not report.ok
    by_path = {problem["path"]: problem["message"] for problem in report.errors}
    assert "unreadable or corrupt image" in by_path["zero/broken.png"]
    assert "unsupported extension '.txt'" in by_path["zero/notes.txt"]
    assert "at least 2" in by_path["one"]
    assert "no files" in by_path["two"]
    assert "outside any class folder" in by_path["stray.png"]
    assert report.status_details and report.status_details.startswith("zero/notes.txt: unsupported")
    assert report.status_details.endswith("(and 4 more problems)")
    from app.files.formats import DatasetError

    with pytest.raises(DatasetError):
        IMAGE_ARCHIVE.read(path, "bad.zip")


def test_metadata_problems(tmp_path: Path, digits: dict[str, list[bytes]]) -> None:
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as out:
        for index, data in enumerate(digits["0"]):
            out.writestr(f"{index}.png", data)
        out.writestr("extra.png", digits["1"][0])
        out.writestr(
            "metadata.jsonl",
            '{"file_name": "0.png", "label": "a"}\n{"file_name": "1.png", "label": "a"}\n'
            '{"file_name": "2.png", "label": "a"}\n{"file_name": "gone.png", "label": "a"}\n'
            '{"file_name": "0.png"}\n',
        )
    report = IMAGE_ARCHIVE.inspect(path, "m.zip", 20, 1)
    by_path = {problem["path"]: problem["message"] for problem in report.errors}
    assert by_path["gone.png"] == "listed in metadata.jsonl line 4 but not in the archive"
    assert "not listed" in by_path["extra.png"]
    assert "'label'" in by_path["metadata.jsonl:5"]


def test_audio_report(tmp_path: Path) -> None:
    path = folder_zip(tmp_path / "a.zip", tones(per_class=2), suffix=".wav")
    assert AUDIO_ARCHIVE.claims(path, "a.zip") and not IMAGE_ARCHIVE.claims(path, "a.zip")
    report = AUDIO_ARCHIVE.inspect(path, "a.zip", 20, 1)
    assert report.ok, report.errors
    assert report.format == "audio-classification"
    assert report.stats["sample_rates"] == [16000]
    assert report.stats["audio"]["low"]["min_seconds"] == 0.5
    assert report.stats["total_seconds"] == 2.0


# ---- hostile archives: each refused outright ----


def _refused(path: Path, settings: Settings | None = None) -> str:
    with pytest.raises(UploadRefused) as caught:
        IMAGE_ARCHIVE.inspect(path, path.name, 20, 1, settings)
    return str(caught.value)


def _zip_with(path: Path, info: zipfile.ZipInfo, data: bytes, **kwargs: int) -> Path:
    with zipfile.ZipFile(path, "w") as out:
        out.writestr("a/1.png", b"x")
        out.writestr(info, data, **kwargs)
    return path


def test_path_traversal_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path / "t.zip", zipfile.ZipInfo("a/../../evil.png"), b"x")
    assert "climbs out" in _refused(path)


def test_absolute_paths_are_refused(tmp_path: Path) -> None:
    assert "absolute" in _refused(
        _zip_with(tmp_path / "a.zip", zipfile.ZipInfo("/etc/x.png"), b"x")
    )
    assert "absolute" in _refused(_zip_with(tmp_path / "b.zip", zipfile.ZipInfo("C:/x.png"), b"x"))


def test_symlinks_are_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("a/link.png")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert "symbolic link" in _refused(_zip_with(tmp_path / "s.zip", info, b"/etc/passwd"))


def test_a_bomb_by_ratio_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("a/big.bmp")
    path = _zip_with(
        tmp_path / "r.zip", info, b"\0" * (4 << 20), compress_type=zipfile.ZIP_DEFLATED
    )
    assert "zip bomb" in _refused(path)


def test_a_bomb_by_total_size_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path / "z.zip", zipfile.ZipInfo("a/2.png"), bytes(range(256)) * 8)
    refused = _refused(path, Settings(archive_max_total_bytes=1000))
    assert "unpacks to more than 1000 bytes" in refused


def test_a_member_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path / "m.zip", zipfile.ZipInfo("a/2.png"), bytes(200))
    refused = _refused(path, Settings(archive_max_member_bytes=100))
    assert "a file may be at most 100 bytes" in refused


def test_a_lowered_ratio_refuses_what_the_default_takes(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("a/big.bmp")
    # 2 MiB of random bits, a byte each: deflates about 7x
    data = random.Random(0).choices([b"\0", b"\1"], k=2 << 20)
    path = _zip_with(tmp_path / "r.zip", info, b"".join(data), compress_type=zipfile.ZIP_DEFLATED)
    IMAGE_ARCHIVE.inspect(path, path.name, 20, 1, Settings())  # the default takes it
    assert "zip bomb" in _refused(path, Settings(archive_max_ratio=4))


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.zip"
    with zipfile.ZipFile(path, "w") as out:
        for index in range(11):
            out.writestr(f"a/{index}.png", b"x")
    assert "11 entries" in _refused(path, Settings(archive_max_entries=10))


def test_the_limits_default_to_the_settings_defaults_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.settings import get_settings

    get_settings.cache_clear()
    assert archive.ArchiveLimits.from_env() == archive.ArchiveLimits(
        200_000, 32 * 1024**3, 512 * 1024**2, 200.0
    )
    monkeypatch.setenv("TUNERY_ARCHIVE_MAX_ENTRIES", "7")
    get_settings.cache_clear()
    try:
        assert archive.ArchiveLimits.from_env().max_entries == 7
    finally:
        get_settings.cache_clear()


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04 then nothing")
    assert "not a readable zip" in _refused(path)

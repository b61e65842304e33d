"""The artifact store on a local folder and on S3 (moto's S3 server, over real HTTP)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage import MANIFEST, ArtifactStore, TooLarge
from tests.support.live import free_port

BUCKET = "tunery-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    saved["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION")
    saved["AWS_ENDPOINT_URL"] = os.environ.get("AWS_ENDPOINT_URL")
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return ArtifactStore(f"file://{tmp_path / 'artifacts'}", tmp_path / "cache")
    request.getfixturevalue("s3_endpoint")
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    return ArtifactStore(prefix, tmp_path / "cache")


def _raw_keys(store: ArtifactStore) -> list[str]:
    return sorted(str(p) for p in store.fs.find(store.root))


def test_write_read_roundtrip(store: ArtifactStore) -> None:
    written = store.write_stream("files/f1/data", iter([b"hello ", b"world"]))
    assert written == 11
    assert store.exists("files/f1/data")
    assert store.size("files/f1/data") == 11
    assert b"".join(store.iter_bytes("files/f1/data", chunk_size=4)) == b"hello world"
    assert store.local_file("files/f1/data").read_bytes() == b"hello world"
    assert store.list_files("files") == ["f1/data"]


def test_too_large_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(TooLarge):
        store.write_stream("files/big/data", iter([b"x" * 600, b"x" * 600]), limit=1000)
    assert not store.exists("files/big/data")
    assert not [k for k in _raw_keys(store) if "big" in k]


def test_put_dir_and_local_dir(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / MANIFEST).write_text('{"task": "classification"}')
    (source / "weights.safetensors").write_bytes(b"\0" * 2048)
    (source / "sub" / "vocab.txt").write_text("a\nb\n")
    store.put_dir(source, "models/job1/model")

    assert store.list_files("models/job1/model") == [
        "sub/vocab.txt",
        MANIFEST,
        "weights.safetensors",
    ]
    local = store.local_dir("models/job1/model")
    assert (local / "sub" / "vocab.txt").read_text() == "a\nb\n"
    assert (local / "weights.safetensors").stat().st_size == 2048
    assert not [p for p in _raw_keys(store) if ".partial-" in p]
    # a missing key is an empty directory, not an error
    assert not any(p.is_file() for p in store.local_dir("models/nothing").rglob("*"))


def test_invalid_keys_are_refused(store: ArtifactStore) -> None:
    for key in ("", "/", "files/../../etc/passwd"):
        with pytest.raises(ValueError):
            store.exists(key)


def test_s3_caches_follow_rewrites(s3_endpoint: str, tmp_path: Path) -> None:
    """A key written again (a retried job, a new export) is fetched again, not served stale."""
    url = f"s3://{BUCKET}/rewrite"
    writer = ArtifactStore(url, tmp_path / "writer-cache")
    reader = ArtifactStore(url, tmp_path / "reader-cache")  # another process, another host
    first = tmp_path / "v1"
    first.mkdir()
    (first / MANIFEST).write_text('{"v": 1}')
    writer.put_dir(first, "models/j/model")
    assert (reader.local_dir("models/j/model") / MANIFEST).read_text() == '{"v": 1}'

    second = tmp_path / "v2"
    second.mkdir()
    (second / MANIFEST).write_text('{"v": 2, "more": true}')
    (second / "extra.json").write_text("{}")
    writer.delete("models/j/model")
    writer.put_dir(second, "models/j/model")
    fresh = reader.local_dir("models/j/model")
    assert (fresh / MANIFEST).read_text() == '{"v": 2, "more": true}'
    assert (fresh / "extra.json").exists()
    # the stale copy was dropped from the cache
    assert [p.name for p in (tmp_path / "reader-cache" / "artifacts").iterdir()] == [fresh.name]

    writer.write_stream("files/x/data", iter([b"one"]))
    assert reader.local_file("files/x/data").read_bytes() == b"one"
    writer.write_stream("files/x/data", iter([b"two!"]))
    assert reader.local_file("files/x/data").read_bytes() == b"two!"
    # the writer kept the bytes it spooled as its cached copy: no download needed
    assert writer.local_file("files/x/data").read_bytes() == b"two!"
    assert reader.exists("files/x/data") and reader.list_files("files") == ["x/data"]

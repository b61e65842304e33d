"""Hostile and broken uploads, over HTTP against a live `tunery api`.

Every upload is answered with a clear 4xx, or becomes a file in status "error" whose
details name the line and what to change; nothing half-written is ever visible: not in
GET /v1/files, not as a complete file in the artifact store, and a body over the limit is
refused before it is read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.storage import ArtifactStore
from tests.support import live

pytestmark = pytest.mark.faults

LIMIT = 16 * 1024 * 1024
ROWS = [{"text": f"caf\u00e9 number {i}", "label": "ab"[i % 2]} for i in range(12)]


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> Iterator[live.LiveServer]:
    data = tmp_path_factory.mktemp("uploads") / "data"
    with live.api_only(data, tiny_models, TUNERY_MAX_UPLOAD_BYTES=str(LIMIT)) as srv:
        yield srv


def stored(server: live.LiveServer) -> list[Path]:
    """Every file under the artifact store's folder (complete or not)."""
    root = server.data_dir / "artifacts"
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def listed(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/files")
    assert response.status_code == 200, response.text
    return {f["id"]: f for f in response.json()["data"]}


def assert_nothing_half_written(server: live.LiveServer, client: httpx.Client) -> None:
    """The store holds exactly the listed files, each whole; no partial write anywhere."""
    files = listed(client)
    on_disk = stored(server)
    assert not [p for p in on_disk if ".partial-" in p.name], on_disk
    expected = sorted(Path("files") / f["id"] / f["filename"] for f in files.values())
    assert on_disk == expected
    for file in files.values():
        path = server.data_dir / "artifacts" / "files" / file["id"] / file["filename"]
        assert path.stat().st_size == file["bytes"]


def post_file(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    """A multipart upload with the filename as sent, byte for byte (httpx would escape
    control characters in it)."""
    body = (
        b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="'
        + name.encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n--x--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    return client.post("/v1/files", content=body, headers=headers)


def port_of(server: live.LiveServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(
    server: live.LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: tunery\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1099511627776\r\n\r\n"  # 1 TiB announced, not one byte sent
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer
    error = json.loads(body)["error"]
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert "1099511627776" in error["message"] and "TUNERY_MAX_UPLOAD_BYTES" in error["message"]
    assert b"connection: close" in head.lower()
    with server.client() as client:
        assert_nothing_half_written(server, client)


def test_a_streamed_body_over_the_limit_is_cut_off(server: live.LiveServer) -> None:
    """No Content-Length (chunked): refused once past the limit, not spooled whole."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        block = b'{"text": "hello", "label": "a"}\n' * 32768  # 1 MiB
        for _ in range(4 * LIMIT // len(block)):
            sent += len(block)
            yield block
        yield b"\r\n--x--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    with server.client() as client:
        try:
            response = client.post("/v1/files", content=body(), headers=headers)
        except httpx.TransportError:  # the server may close before the client sent it all
            response = None
        if response is not None:
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "file_too_large"
        assert_nothing_half_written(server, client)
        assert client.get("/healthz").status_code == 200


def _latin1(rows: list[dict[str, Any]]) -> bytes:
    return jsonl(rows).encode("latin-1")


# (filename, content, status "error" details must contain)
BROKEN_FILES = [
    ("malformed.jsonl", (jsonl(ROWS) + '{"text": "cut off", "label": \n').encode(), "line 13"),
    ("not-objects.jsonl", (jsonl(ROWS) + "[1, 2]\n").encode(), "line 13: each line must be"),
    ("utf16.jsonl", jsonl(ROWS).encode("utf-16"), "line 1: not valid UTF-8"),
    ("latin1.jsonl", _latin1(ROWS), "line 1: not valid UTF-8"),
    ("empty.jsonl", b"", "the file has no rows"),
    ("blank.jsonl", b"\n \n\t\n", "the file has no rows"),
    ("one-line.jsonl", b"y" * (10 * 1024 * 1024), "line 1: invalid JSON"),
    ("nul.jsonl", b"\x00" * 4096, "line 1: invalid JSON"),
    ("missing-column.csv", b"text\n" + b"hello\n" * 12, "the CSV header must be"),
    (
        "short-row.csv",
        b"text,label\n" + b"".join(b"row %d,a\n" % i for i in range(12)) + b"alone\n",
        "line 14: expected 2 fields",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "details"), BROKEN_FILES, ids=[case[0] for case in BROKEN_FILES]
)
def test_a_broken_file_is_stored_with_status_error(
    server: live.LiveServer, name: str, content: bytes, details: str
) -> None:
    with server.client() as client:
        started = time.monotonic()
        response = post_file(client, name, content)
        assert time.monotonic() - started < 30
        assert response.status_code == 200, response.text
        file = response.json()
        assert file["status"] == "error", file
        assert details in file["status_details"], file["status_details"]
        assert file["errors"] and file["bytes"] == len(content)
        assert client.get(f"/v1/files/{file['id']}").json()["status"] == "error"
        # a job cannot train on it: the 400 names the file
        job = client.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
        )
        assert job.status_code == 400, job.text
        assert job.json()["error"]["param"] == "training_file"
        assert_nothing_half_written(server, client)


def test_a_10_mb_row_is_accepted_with_a_warning(server: live.LiveServer) -> None:
    big = {"text": "long " * (2 * 1024 * 1024), "label": "a"}  # one 10 MiB line
    content = jsonl([big, *ROWS]).encode()
    with server.client() as client:
        file = post_file(client, "long-row.jsonl", content).json()
        assert file["status"] == "processed", file
        assert file["stats"]["rows"] == 13
        assert file["stats"]["long_examples"]["lines"] == [1]
        assert client.get(f"/v1/files/{file['id']}/content").content == content
        assert_nothing_half_written(server, client)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("../../../../escape.jsonl", "escape.jsonl"),
        ("/etc/cron.d/tunery.jsonl", "tunery.jsonl"),
        ("..\\..\\windows.jsonl", "windows.jsonl"),
        ("nested/dirs/train.jsonl", "train.jsonl"),
        ("bell\x07and\x1bescape.jsonl", "bellandescape.jsonl"),
    ],
)
def test_a_filename_keeps_only_its_last_segment(
    server: live.LiveServer, sent: str, kept: str
) -> None:
    with server.client() as client:
        response = post_file(client, sent, jsonl(ROWS).encode())
        assert response.status_code == 200, response.text
        file = response.json()
        assert file["filename"] == kept and file["status"] == "processed"
        assert (server.data_dir / "artifacts" / "files" / file["id"] / kept).is_file()
        assert_nothing_half_written(server, client)
    assert not (server.data_dir / "escape.jsonl").exists()
    assert not Path("/etc/cron.d/tunery.jsonl").exists()


@pytest.mark.parametrize("sent", ["..", ".", "", "/", "dir/.."])
def test_a_filename_without_a_name_is_refused(server: live.LiveServer, sent: str) -> None:
    with server.client() as client:
        before = listed(client)
        response = post_file(client, sent, jsonl(ROWS).encode())
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "file" and "filename" in error["message"]
        assert listed(client) == before
        assert_nothing_half_written(server, client)


def test_the_api_killed_mid_upload_leaves_no_file(tmp_path: Path, tiny_models: Path) -> None:
    """SIGKILL while the body arrives, and while it is copied into the store."""
    size = 256 * 1024 * 1024
    with live.api_only(
        tmp_path / "data", tiny_models, TUNERY_MAX_UPLOAD_BYTES=str(2 * size)
    ) as server:
        artifacts = server.data_dir / "artifacts"
        head = (
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        tail = b"\r\n--x--\r\n"
        row = b'{"text": "hello there", "label": "a"}\n'
        block = row * (1024 * 1024 // len(row))
        blocks = size // len(block)
        length = len(head) + blocks * len(block) + len(tail)

        def send_upload() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=30)
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: tunery\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: %d\r\n\r\n" % length + head
            )
            return sock

        # 1. killed while the body is still arriving (half of it sent)
        sock = send_upload()
        for _ in range(blocks // 2):
            sock.sendall(block)
        server.kill("api")
        sock.close()
        server.restart("api", f"{server.base_url}/healthz")
        with server.client() as client:
            assert listed(client) == {}
        assert stored(server) == []

        # 2. killed while the route copies the received body into the store
        sock = send_upload()
        for _ in range(blocks):
            sock.sendall(block)
        sock.sendall(tail)
        deadline = time.monotonic() + 60
        partials: list[Path] = []
        while time.monotonic() < deadline and not partials:
            partials = [p for p in artifacts.rglob("*.partial-*") if p.stat().st_size > 0]
            time.sleep(0.002)
        assert partials, "the copy into the store was never seen"
        server.kill("api")
        sock.close()
        assert 0 < partials[0].stat().st_size < size, "killed too late to test anything"
        server.restart("api", f"{server.base_url}/healthz")
        with server.client() as client:
            assert listed(client) == {}
        store = ArtifactStore(f"file://{artifacts}", tmp_path / "cache")
        assert store.list_files("files") == []
        # the abandoned partial is never listed; an API starting later sweeps it once old
        assert [p.name for p in stored(server)] == [partials[0].name]
        os.utime(partials[0], (time.time() - 7 * 3600,) * 2)
        server.restart("api", f"{server.base_url}/healthz")
        deadline = time.monotonic() + 10
        while stored(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored(server) == []

"""The artifact store: uploads, checkpoints and models, over fsspec.

Keys are relative paths ("files/file-abc/data", "models/ftjob-abc/model/..."). A local
folder when embedded (file://), s3:// when workers on several hosts share it. Writes are
atomic: a file appears under its key only once it is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec


class ArtifactStore:
    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.cache_dir = cache_dir
        self.is_local = self.fs.protocol in ("file", "local") or (
            isinstance(self.fs.protocol, tuple) and "file" in self.fs.protocol
        )
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        clean = key.strip("/")
        if not clean or ".." in clean.split("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.root}/{clean}"

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def open_read(self, key: str) -> IO[bytes]:
        return self.fs.open(self._path(key), "rb")

    def iter_bytes(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open_read(key) as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def write_stream(self, key: str, chunks: Iterator[bytes], limit: int | None = None) -> int:
        """Write chunks under key atomically; returns the byte count.

        Raises TooLarge (and leaves nothing behind) when more than `limit` bytes arrive.
        """
        target = self._path(key)
        partial = f"{target}.partial-{uuid.uuid4().hex}"
        self.fs.makedirs(self.fs._parent(partial), exist_ok=True)
        written = 0
        try:
            with self.fs.open(partial, "wb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if limit is not None and written > limit:
                        raise TooLarge(limit)
                    out.write(chunk)
            self.fs.mv(partial, target)
        except BaseException:
            self._remove_quietly(partial)
            raise
        return written

    def put_dir(self, local_dir: Path, key: str) -> None:
        """Upload a directory tree under key (files written atomically, one by one)."""
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                with path.open("rb") as fh:
                    self.write_stream(f"{key}/{rel}", _read_chunks(fh))

    def list_files(self, key: str) -> list[str]:
        """Keys of every file below key (relative to key)."""
        base = self._path(key)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        rels = []
        for item in found:
            item_str = str(item)
            if ".partial-" in item_str:
                continue
            rels.append(item_str[len(base.rstrip("/")) + 1 :] if item_str != base else "")
        return sorted(r for r in rels if r)

    def local_dir(self, key: str) -> Path:
        """A local directory holding the tree under key (the store itself when local)."""
        if self.is_local:
            return Path(self._path(key))
        digest = hashlib.sha256(f"{self.url}/{key}".encode()).hexdigest()[:16]
        target = self.cache_dir / "artifacts" / digest
        if (target / ".complete").exists():
            return target
        tmp = target.with_name(f"{digest}.tmp-{uuid.uuid4().hex[:8]}")
        for rel in self.list_files(key):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.open_read(f"{key}/{rel}") as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / ".complete").touch()
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def local_file(self, key: str) -> Path:
        """A local path holding the file under key (the store itself when local)."""
        if self.is_local:
            return Path(self._path(key))
        digest = hashlib.sha256(f"{self.url}/{key}".encode()).hexdigest()[:16]
        target = self.cache_dir / "files" / digest
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{digest}.tmp-{uuid.uuid4().hex[:8]}")
            with self.open_read(key) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        return target

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _remove_quietly(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except Exception:
            pass


def _read_chunks(fh: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


def get_store(settings: Any | None = None) -> ArtifactStore:
    from app.settings import get_settings

    s = settings or get_settings()
    return ArtifactStore(s.storage_url, s.cache_dir)

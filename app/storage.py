"""The artifact store: uploads, checkpoints and models, over fsspec.

Keys are relative paths ("files/file-abc/data", "models/ftjob-abc/model/..."). A local
folder when embedded (file://), s3:// when workers on several hosts share it. Writes are
atomic: a file appears under its key only once it is complete.

- Local folder: written to `<key>.partial-<uuid>`, then renamed (a rename is atomic).
- Object stores (s3://, gs://, ...): an object appears only when its PUT (or multipart
  upload) completes, so the bytes go straight to the key; a rename there would be a copy.
  Uploads are first spooled to local disk, which lets the size limit refuse a body before
  anything is sent, and seeds the local download cache with the same bytes.

`local_file`/`local_dir` give code that needs real paths (the trainer, the model loader) a
local copy of a remote key. The copies live under `cache_dir`, named after the key *and* the
version of what is stored (size and ETag), so a key that was written again is fetched again,
and two processes never share a half-written copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

log = logging.getLogger(__name__)

# written last by put_dir: when it exists, the rest of the tree is there too
MANIFEST = "tunery.json"


class ArtifactStore:
    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url = url.rstrip("/")
        protocol, _ = fsspec.core.split_protocol(self.url)
        self.is_local = protocol in (None, "file", "local")
        options: dict[str, Any] = {}
        if not self.is_local:
            # other processes write the same bucket: a cached listing would hide their files
            options["use_listings_cache"] = False
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        self.root = self.root.rstrip("/")
        self.cache_dir = cache_dir
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
        if not self.is_local:
            return self._write_remote(key, chunks, limit)
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

    def _write_remote(self, key: str, chunks: Iterator[bytes], limit: int | None) -> int:
        spool_dir = self.cache_dir / "spool"
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool_dir)
        spooled = Path(name)
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if limit is not None and written > limit:
                        raise TooLarge(limit)
                    out.write(chunk)
            self.fs.put_file(str(spooled), self._path(key))
            # the bytes are here already: keep them as the cached copy of this version
            cached = self._cached_file_path(key, self.fs.info(self._path(key)))
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(spooled, cached)
        finally:
            spooled.unlink(missing_ok=True)
        return written

    def put_dir(self, local_dir: Path, key: str) -> None:
        """Upload a directory tree under key, each file atomically; tunery.json goes last."""
        files = sorted(
            (p for p in local_dir.rglob("*") if p.is_file()),
            key=lambda p: (p.relative_to(local_dir).as_posix() == MANIFEST, p.as_posix()),
        )
        for path in files:
            rel = path.relative_to(local_dir).as_posix()
            if self.is_local:
                with path.open("rb") as fh:
                    self.write_stream(f"{key}/{rel}", _read_chunks(fh))
            else:
                self.fs.put_file(str(path), self._path(f"{key}/{rel}"))

    def list_files(self, key: str) -> list[str]:
        """Keys of every file below key (relative to key)."""
        return sorted(self._listing(key))

    def _listing(self, key: str) -> dict[str, dict[str, Any]]:
        """{relative name: fsspec info} of every complete file below key."""
        base = self._path(key)
        if not self.fs.exists(base):
            return {}
        found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        prefix = base.rstrip("/") + "/"
        listing = {}
        for path, info in found.items():
            path = str(path)
            if ".partial-" in path or not path.startswith(prefix):
                continue
            listing[path[len(prefix) :]] = info
        return listing

    def local_dir(self, key: str) -> Path:
        """A local directory holding the tree under key (the store itself when local)."""
        if self.is_local:
            return Path(self._path(key))
        listing = self._listing(key)
        version = hashlib.sha256(
            json.dumps(sorted((rel, _version_of(info)) for rel, info in listing.items())).encode()
        ).hexdigest()[:16]
        key_digest = self._digest(key)
        target = self.cache_dir / "artifacts" / f"{key_digest}-{version}"
        if target.is_dir():  # renamed into place only once complete
            return target
        tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            for rel in listing:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._path(f"{key}/{rel}"), str(dest))
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # another process finished the same version first; theirs is as good
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune(target.parent, f"{key_digest}-", keep=target.name)
        return target

    def local_file(self, key: str) -> Path:
        """A local path holding the file under key (the store itself when local)."""
        if self.is_local:
            return Path(self._path(key))
        target = self._cached_file_path(key, self.fs.info(self._path(key)))
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                self.fs.get_file(self._path(key), str(tmp))
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            self._prune(target.parent, f"{self._digest(key)}-", keep=target.name)
        return target

    def remove_partials(self, older_than_seconds: float) -> int:
        """Delete `.partial-*` files (local store) left by writers that died mid-write and
        not touched for `older_than_seconds`; returns how many. They are never listed, so
        this only frees their space. Object stores have none: an unfinished upload is no
        object."""
        if not self.is_local:
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for folder, _dirs, names in os.walk(self.root):
            for name in names:
                if ".partial-" not in name:
                    continue
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        if removed:
            log.info("removed %d abandoned partial write(s) from %s", removed, self.root)
        return removed

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _digest(self, key: str) -> str:
        return hashlib.sha256(f"{self.url}/{key.strip('/')}".encode()).hexdigest()[:16]

    def _cached_file_path(self, key: str, info: dict[str, Any]) -> Path:
        version = hashlib.sha256(json.dumps(_version_of(info)).encode()).hexdigest()[:16]
        return self.cache_dir / "files" / f"{self._digest(key)}-{version}"

    @staticmethod
    def _prune(folder: Path, prefix: str, keep: str) -> None:
        """Drop older cached versions of the same key (best effort)."""
        for old in folder.glob(f"{prefix}*"):
            if old.name != keep and ".tmp-" not in old.name:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(Exception):
            if self.fs.exists(path):
                self.fs.rm(path)


def _version_of(info: dict[str, Any]) -> list[Any]:
    """What changes when an object is written again: its size and ETag (or mtime)."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime")
    return [info.get("size"), str(tag) if tag is not None else None]


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

"""Uploads: stream to the store, inspect once, record the report."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from sqlalchemy.orm import Session

from app.auth import quota_exceeded
from app.failures import APIError, not_found
from app.files import repository
from app.files.formats import inspect_file
from app.files.schemas import has_samples
from app.ids import new_id
from app.settings import Settings
from app.storage import ArtifactStore, TooLarge
from app.tables import FileRow
from task_plugins.base import UploadRefused
from task_plugins.media import archive
from task_plugins.media.archive import ArchiveLimits, Example

PURPOSES = ("fine-tune",)
MAX_FILENAME = 255


def clean_filename(raw: str | None) -> str:
    """Keep only the last path segment: a client's path never reaches the store."""
    name = PurePosixPath((raw or "").replace("\\", "/")).name.strip()
    name = "".join(ch for ch in name if ch.isprintable())
    if not name or name in (".", ".."):
        raise APIError(
            400, "The uploaded file needs a filename, such as train.jsonl.", param="file"
        )
    return name[:MAX_FILENAME]


def _chunks(stream: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


def create_file(
    session: Session,
    store: ArtifactStore,
    *,
    stream: BinaryIO,
    filename: str | None,
    purpose: str,
    max_bytes: int,
    project_id: str,
    quota_bytes: int | None = None,
    min_examples: int = 1,
    settings: Settings | None = None,
) -> FileRow:
    if purpose not in PURPOSES:
        raise APIError(
            400,
            f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}.",
            param="purpose",
        )
    name = clean_filename(filename)
    used = repository.stored_bytes(session, project_id) if quota_bytes is not None else 0
    if quota_bytes is not None and used >= quota_bytes:
        raise _over_storage(used, quota_bytes)
    file_id = new_id("file")
    key = f"files/{file_id}/{name}"
    try:
        # never more than the quota has room for: an upload past it stops being read there
        room = max_bytes if quota_bytes is None else min(max_bytes, quota_bytes - used)
        size = store.write_stream(key, _chunks(stream), limit=room)
    except TooLarge as exc:
        store.delete(f"files/{file_id}")  # the partial is gone; leave no empty folder either
        if exc.limit < max_bytes:
            assert quota_bytes is not None
            raise _over_storage(used, quota_bytes) from exc
        raise APIError(
            413,
            f"The file is larger than the limit of {exc.limit} bytes; split it or raise "
            "TUNERY_MAX_UPLOAD_BYTES.",
            param="file",
            code="file_too_large",
        ) from exc
    try:
        report = inspect_file(
            store.local_file(key), name, min_examples=min_examples, settings=settings
        )
    except UploadRefused as exc:
        store.delete(f"files/{file_id}")
        raise APIError(400, f"{name}: {exc}.", param="file", code="invalid_archive") from exc
    except BaseException:
        store.delete(f"files/{file_id}")
        raise
    row = FileRow(
        id=file_id,
        project_id=project_id,
        filename=name,
        purpose=purpose,
        bytes=size,
        status="processed" if report.ok else "error",
        status_details=report.status_details,
        format=report.format,
        stats=report.stats,
        errors=report.errors,
        storage_key=key,
    )
    session.add(row)
    try:
        session.flush()
    except BaseException:
        store.delete(f"files/{file_id}")
        raise
    return row


def _over_storage(used: int, quota: int) -> APIError:
    return quota_exceeded(
        f"This upload would take the project's stored files past its storage quota of {quota} "
        f"bytes ({used} bytes are used). Delete files with DELETE /v1/files/{{file_id}}, or ask "
        "the operator to raise TUNERY_QUOTA_STORAGE_BYTES.",
        param="file",
    )


def get_file(session: Session, file_id: str, project_id: str) -> FileRow:
    row = repository.get(session, file_id, project_id)
    if row is None:
        raise not_found("file", file_id, param="file_id")
    return row


def delete_file(session: Session, store: ArtifactStore, file_id: str, project_id: str) -> None:
    row = get_file(session, file_id, project_id)
    users = repository.active_jobs_using(session, file_id)
    if users:
        raise APIError(
            409,
            f"File {file_id} is used by unfinished job(s) {', '.join(users)}; cancel them or "
            "wait until they finish before deleting it.",
            param="file_id",
            code="file_in_use",
        )
    row.deleted = True
    session.flush()
    store.delete(f"files/{file_id}")


# -- samples of an image or audio archive (the dashboard's grids and players) -----------------


@dataclass(frozen=True)
class Sample:
    index: int
    example: Example

    @property
    def media_type(self) -> str:
        return archive.media_type(self.example.member)


def scan_stored_archive(store: ArtifactStore, row: FileRow, limits: ArchiveLimits) -> archive.Scan:
    """The archive's examples, read from its zip directory through a seekable stream of the
    stored upload (never extracted, never read whole), with the upload's hostile checks."""
    if not has_samples(row.format):
        raise APIError(
            400,
            f"File {row.id} ({row.filename}) is in {row.format or 'no known'} format; samples "
            f"are shown for {' and '.join(archive.FORMATS.values())} archives only.",
            param="file_id",
            code="invalid_file_format",
        )
    try:
        with store.open_read(row.storage_key) as stream:
            return archive.scan(stream, verify=False, limits=limits)
    except (UploadRefused, OSError, zipfile.BadZipFile) as exc:
        raise APIError(
            409,
            f"File {row.id} cannot be read as an archive now ({exc}); upload it again.",
            param="file_id",
            code="invalid_archive",
        ) from exc


def list_samples(
    session: Session,
    store: ArtifactStore,
    file_id: str,
    project_id: str,
    per_class: int,
    limits: ArchiveLimits,
) -> tuple[FileRow, list[Sample]]:
    """The first `per_class` examples of each class of an image or audio archive."""
    row = get_file(session, file_id, project_id)
    found = scan_stored_archive(store, row, limits)
    return row, [Sample(index, example) for index, example in archive.samples(found, per_class)]


def sample_chunks(
    session: Session,
    store: ArtifactStore,
    file_id: str,
    project_id: str,
    index: int,
    limits: ArchiveLimits,
) -> tuple[Sample, Iterator[bytes]]:
    """Example `index` of the archive (as listed by its samples, and in a job's
    misclassified examples), and its bytes as they unpack, chunk by chunk."""
    row = get_file(session, file_id, project_id)
    found = scan_stored_archive(store, row, limits)
    if not 0 <= index < len(found.examples):
        raise APIError(
            404,
            f"File {file_id} has {len(found.examples)} examples; sample index {index} is not "
            f"one of them (0 to {len(found.examples) - 1}).",
            param="index",
            code="not_found",
        )
    sample = Sample(index, found.examples[index])
    return sample, _member_chunks(store, row.storage_key, sample.example.member, limits)


def _member_chunks(
    store: ArtifactStore, key: str, member: str, limits: ArchiveLimits, size: int = 1 << 16
) -> Iterator[bytes]:
    # opened again here: the response streams after the route returned
    with (
        store.open_read(key) as stream,
        archive.open_archive(stream, limits) as opened,
        opened.open(member) as source,
    ):
        while chunk := source.read(size):
            yield chunk

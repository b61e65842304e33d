from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.files.formats import long_examples_warning
from app.tables import FileRow
from task_plugins.media import archive


def has_samples(file_format: str | None) -> bool:
    """Whether GET /v1/files/{id}/samples shows examples of a file of this format (image and
    audio archives)."""
    return file_format in archive.FORMATS.values()


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None
    format: str | None
    stats: dict[str, Any]
    errors: list[dict[str, Any]]
    # things that do not stop training but that the user should know, e.g. long examples
    warnings: list[str] = []
    # GET /v1/files/{id}/samples shows examples of it (image and audio archives)
    samples: bool = False

    @classmethod
    def of(cls, row: FileRow) -> FilePublic:
        long_examples = long_examples_warning(row.stats or {})
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,  # type: ignore[arg-type]
            status_details=row.status_details,
            format=row.format,
            stats=row.stats or {},
            errors=row.errors or [],
            warnings=[long_examples] if long_examples else [],
            samples=has_samples(row.format),
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileSample(BaseModel):
    """One example of an image or audio archive; its bytes are at
    GET /v1/files/{file_id}/samples/{index}/content."""

    index: int
    file: str  # the member's path in the archive
    label: str
    content_type: str


class FileSamples(BaseModel):
    object: Literal["list"] = "list"
    file_id: str
    format: str | None
    data: list[FileSample]

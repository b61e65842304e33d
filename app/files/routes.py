from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from app.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from app.errors import download_response
from app.files import repository, service
from app.files.schemas import FileDeleted, FilePublic, FileSample, FileSamples
from app.pagination import check_limit, page
from task_plugins.media.archive import ArchiveLimits

router = APIRouter(prefix="/v1/files", tags=["files"])
# OpenAI's files list returns up to 10,000 files by default; the SDK pages on with `after`
MAX_FILES_LIMIT = 10_000
MAX_SAMPLES_PER_CLASS = 50


@router.post("", response_model=FilePublic)
def upload_file(
    principal: PrincipalDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL or CSV training data")],
    purpose: Annotated[str, Form()] = "fine-tune",
) -> FilePublic:
    row = service.create_file(
        session,
        store,
        stream=file.file,
        filename=file.filename,
        purpose=purpose,
        max_bytes=settings.max_upload_bytes,
        project_id=principal.project_id,
        quota_bytes=settings.quota_storage_bytes,
        min_examples=settings.min_training_examples,
        settings=settings,
    )
    return FilePublic.of(row)


@router.get("")
def list_files(
    principal: PrincipalDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query()] = MAX_FILES_LIMIT,
    purpose: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    rows = repository.list_page(
        session,
        project_id=principal.project_id,
        after=after,
        limit=check_limit(limit, MAX_FILES_LIMIT),
        purpose=purpose,
        order=order,
    )
    return page([FilePublic.of(r).model_dump() for r in rows], limit)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(principal: PrincipalDep, session: SessionDep, file_id: str) -> FilePublic:
    return FilePublic.of(service.get_file(session, file_id, principal.project_id))


@router.get("/{file_id}/content", responses=download_response("application/octet-stream"))
def file_content(
    principal: PrincipalDep, session: SessionDep, store: StoreDep, file_id: str
) -> StreamingResponse:
    row = service.get_file(session, file_id, principal.project_id)
    return StreamingResponse(
        store.iter_bytes(row.storage_key),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{row.filename.replace(chr(34), "")}"'
        },
    )


@router.get("/{file_id}/samples", response_model=FileSamples)
def list_samples(
    principal: PrincipalDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    file_id: str,
    per_class: Annotated[int, Query(ge=1, le=MAX_SAMPLES_PER_CLASS)] = 6,
) -> FileSamples:
    """A few examples of each class of an image or audio archive, by label."""
    row, found = service.list_samples(
        session, store, file_id, principal.project_id, per_class, ArchiveLimits.of(settings)
    )
    return FileSamples(
        file_id=row.id,
        format=row.format,
        data=[
            FileSample(
                index=s.index,
                file=s.example.member,
                label=s.example.label,
                content_type=s.media_type,
            )
            for s in found
        ],
    )


@router.get(
    "/{file_id}/samples/{index}/content",
    responses={
        200: {
            "description": "The example's bytes (image/* or audio/*)",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
def sample_content(
    principal: PrincipalDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    file_id: str,
    index: int,
) -> StreamingResponse:
    sample, chunks = service.sample_chunks(
        session, store, file_id, principal.project_id, index, ArchiveLimits.of(settings)
    )
    return StreamingResponse(
        chunks,
        media_type=sample.media_type,
        headers={
            # the type is the extension's; never let a browser guess another (HTML, script)
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "private, max-age=3600",
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(
    principal: PrincipalDep, session: SessionDep, store: StoreDep, file_id: str
) -> FileDeleted:
    service.delete_file(session, store, file_id, principal.project_id)
    return FileDeleted(id=file_id)

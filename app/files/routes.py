from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from app.deps import SessionDep, SettingsDep, StoreDep
from app.files import repository, service
from app.files.schemas import FileDeleted, FilePublic
from app.pagination import check_limit, page

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FilePublic)
def upload_file(
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
    )
    return FilePublic.of(row)


@router.get("")
def list_files(
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
    purpose: str | None = None,
) -> dict[str, Any]:
    rows = repository.list_page(session, after=after, limit=check_limit(limit), purpose=purpose)
    return page([FilePublic.of(r).model_dump() for r in rows], limit)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(session: SessionDep, file_id: str) -> FilePublic:
    return FilePublic.of(service.get_file(session, file_id))


@router.get("/{file_id}/content")
def file_content(session: SessionDep, store: StoreDep, file_id: str) -> StreamingResponse:
    row = service.get_file(session, file_id)
    return StreamingResponse(
        store.iter_bytes(row.storage_key),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{row.filename.replace(chr(34), "")}"'
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(session: SessionDep, store: StoreDep, file_id: str) -> FileDeleted:
    service.delete_file(session, store, file_id)
    return FileDeleted(id=file_id)

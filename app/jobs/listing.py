"""Listing jobs filtered by metadata, as OpenAI's `GET /v1/fine_tuning/jobs?metadata[k]=v`
(the SDK's `jobs.list(metadata={...})`): the jobs whose metadata holds every pair."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from app.jobs import repository
from app.tables import JobRow

# rows read per query while filtering
_SCAN = 200


def metadata_filter(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The `metadata[key]=value` pairs of a query string."""
    return {
        name[len("metadata[") : -1]: value
        for name, value in query
        if name.startswith("metadata[") and name.endswith("]")
    }


def list_page_matching(
    session: Session,
    *,
    project_id: str,
    after: str | None,
    limit: int,
    metadata: dict[str, str],
) -> list[JobRow]:
    """Up to limit + 1 jobs whose metadata holds every pair of `metadata`, newest first,
    after the job `after` (paging as repository.list_page does)."""
    matched: list[JobRow] = []
    cursor = after
    while len(matched) <= limit:
        rows = repository.list_page(session, project_id=project_id, after=cursor, limit=_SCAN)
        for row in rows[:_SCAN]:
            held = row.user_metadata or {}
            if all(held.get(key) == value for key, value in metadata.items()):
                matched.append(row)
        if len(rows) <= _SCAN:
            break
        cursor = rows[_SCAN - 1].id
    return matched[: limit + 1]

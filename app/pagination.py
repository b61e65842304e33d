"""Cursor pagination shaped like OpenAI's lists: {"object": "list", "data", "has_more"}."""

from __future__ import annotations

from typing import Any

from app.errors import APIError

MAX_LIMIT = 100


def check_limit(limit: int, maximum: int = MAX_LIMIT) -> int:
    if not 1 <= limit <= maximum:
        raise APIError(400, f"limit must be between 1 and {maximum}; got {limit}.", param="limit")
    return limit


def unknown_cursor(kind: str, after: str) -> APIError:
    """`after` names no item of the list: paging on from the start would repeat items."""
    return APIError(
        400,
        f"after must be the id of a {kind} from the previous page; no {kind} has id '{after}'.",
        param="after",
        code="invalid_cursor",
    )


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """items holds up to limit + 1 rows: the extra one only tells whether more exist."""
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": len(items) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }

"""Cursor pagination shaped like OpenAI's lists: {"object": "list", "data", "has_more"}.

Every list pages by keyset: rows come in a fixed order of unique sort keys, and `after`
names the last row the client saw. One rule for a cursor that names no row of the list
(never existed, another project's, another job's): 400 `invalid_cursor` naming `after`,
because paging on from the start instead would hand the client rows it already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.failures import APIError

MAX_LIMIT = 100

Row = TypeVar("Row")


def check_limit(limit: int, maximum: int = MAX_LIMIT) -> int:
    if not 1 <= limit <= maximum:
        raise APIError(400, f"limit must be between 1 and {maximum}; got {limit}.", param="limit")
    return limit


def unknown_cursor(kind: str, after: str) -> APIError:
    """`after` names no item of the list: paging on from the start would repeat items."""
    article = "an" if kind[:1] in "aeiou" else "a"
    return APIError(
        400,
        f"after must be the id of {article} {kind} from the previous page (its last_id); "
        f"no {kind} has id '{after}'.",
        param="after",
        code="invalid_cursor",
    )


def keyset(
    session: Session,
    query: Select[Row],
    *,
    id_column: InstrumentedAttribute[Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    after: str | None,
    limit: int,
    kind: str,
    scope: Sequence[ColumnElement[bool]] = (),
    order: Literal["asc", "desc"] = "desc",
) -> list[Row]:
    """Up to limit + 1 rows of `query` in `keys` order, after the row whose id is `after`.

    `keys` must end in a unique column, so that the order is total and no row is skipped or
    repeated between pages. `scope` says which rows may anchor the page: the list's own
    (its project, its job), including rows its filters hide since, such as a file deleted
    after the previous page was read.
    """
    if after:
        anchor = session.execute(select(*keys).where(id_column == after, *scope)).first()
        if anchor is None:
            raise unknown_cursor(kind, after)
        query = query.where(_beyond(keys, tuple(anchor), order))
    ordering = [key.desc() if order == "desc" else key.asc() for key in keys]
    return list(session.scalars(query.order_by(*ordering).limit(limit + 1)))


def _beyond(
    keys: Sequence[InstrumentedAttribute[Any]], anchor: tuple[Any, ...], order: str
) -> ColumnElement[bool]:
    """Rows after the anchor in (k1, k2, ...) order: (k1 beyond a1) or (k1 = a1 and k2 beyond
    a2) or ..."""
    terms = []
    for i, key in enumerate(keys):
        beyond = key < anchor[i] if order == "desc" else key > anchor[i]
        equal = [keys[j] == anchor[j] for j in range(i)]
        terms.append(and_(*equal, beyond))
    return or_(*terms)


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

"""A value the database refused is the caller's to fix, not a 500: the last line of defence
behind the string rule (app/edge.py) and the request schemas.

SQLAlchemy's DataError (Postgres: NUL in text, a string over its column's length, a number out
of its type's range) becomes 400 `invalid_value`, and IntegrityError (a unique key already
taken, a reference to a row that is not there) 409 `conflict`, each naming the parameter when
it can be told: the request's own field holding the value at fault (named as the string rule
names it, `path.job_id`), else the bound parameter or the column the database names. The
handler (app/errors.py) logs each one: every such case is a gap in the checks in front.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc
from starlette.requests import Request

from app.strings import string_problem, walk_strings

# bind parameters and columns whose name in the API differs
_API_NAMES = {"user_metadata": "metadata", "file_id": "file"}
_VARCHAR = re.compile(r"character varying\((\d+)\)")
_PG_KEY = re.compile(r"Key \(([^)]+)\)=")
_SQLITE_COLUMN = re.compile(r"constraint failed: \w+\.(\w+)")
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Refused:
    status: int
    message: str
    param: str | None
    code: str


def refused_value(exc: BaseException, request: Request | None = None) -> Refused | None:
    """The 4xx for a database error caused by a value the request sent, or None when `exc`
    is not one (a lost connection, a bug in a query)."""
    original: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        original = exc.orig
    reason = _printable(str(original).splitlines()[0] if str(original) else type(original).__name__)
    if isinstance(exc, sa_exc.DataError) or isinstance(original, psycopg.DataError):
        param = _param_holding(exc, str(original), request)
        where = f"{param} " if param else "a value of this request "
        return Refused(
            400,
            f"The database refused {where}({reason}); change it and send the request again.",
            param,
            "invalid_value",
        )
    if isinstance(exc, sa_exc.IntegrityError) or isinstance(
        original, psycopg.IntegrityError | sqlite3.IntegrityError
    ):
        param = _conflicting_column(original)
        return Refused(
            409,
            f"The request conflicts with what is stored{f' ({param})' if param else ''}: an "
            "object with this key already exists, or one it refers to does not. Read it back "
            "before retrying.",
            param,
            "conflict",
        )
    return None


def _param_holding(exc: BaseException, reason: str, request: Request | None) -> str | None:
    """The field whose value the database refused (a NUL, or too long a string)."""
    params: Any = getattr(exc, "params", None)
    if isinstance(params, list | tuple) and params and isinstance(params[0], dict):
        params = params[0]  # executemany: the first row stands for all
    if not isinstance(params, dict):
        # a query run on the driver itself (app/reads.py): the request's own bad string
        bad = (p for p, text in _request_strings(request) if string_problem(text, None))
        return next(bad, None)
    too_long = _VARCHAR.search(reason)
    limit = int(too_long.group(1)) if too_long else None
    for name, value in params.items():
        if not isinstance(value, str):
            continue
        if string_problem(value, max_chars=None) or (limit is not None and len(value) > limit):
            sent = next((p for p, text in _request_strings(request) if text == value), None)
            return sent or _api_name(str(name))
    return None


def _request_strings(request: Request | None) -> Iterator[tuple[str, str]]:
    """(param, value) for the strings of a request, named as app/edge.py names them."""
    if request is None:
        return
    for name, value in request.path_params.items():
        yield f"path.{name}", str(value)
    for name, value in request.query_params.multi_items():
        yield f"query.{name}", value
    for path, is_key, text in walk_strings(getattr(request, "_json", None)):
        if not is_key and path:
            yield ".".join(str(part) for part in path), text
    form = getattr(request, "_form", None)
    if form is not None:
        for name, value in form.multi_items():
            if isinstance(value, str):
                yield name, value


def _conflicting_column(original: BaseException) -> str | None:
    diag = getattr(original, "diag", None)
    if diag is not None:
        found = _PG_KEY.search(diag.message_detail or "")
        if found:
            return _api_name(found.group(1).split(",")[0].strip())
        if diag.column_name:
            return _api_name(diag.column_name)
        return None
    found = _SQLITE_COLUMN.search(str(original))
    return _api_name(found.group(1)) if found else None


def _api_name(bind_name: str) -> str:
    # SQLAlchemy names a value compared in a WHERE clause after its column plus "_1"
    name = re.sub(r"_\d+$", "", bind_name)
    return _API_NAMES.get(name, name)


def _printable(text: str) -> str:
    """The driver's words, safe to send back in a JSON body (no lone surrogate), and short."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."

"""The string rule at the request edge: every string a request carries (path ids, query
parameters, JSON keys and values at any depth, multipart field names, filenames and form
values) keeps app/strings.py's rule before any route or service code sees it, else 400
`invalid_string` naming the field.

A dependency of every route rather than a middleware: it runs after routing, so a path id is
named by its parameter (`path.job_id`), and after FastAPI has parsed the body, so the JSON
and the multipart form are read from what FastAPI already holds, never parsed twice. File
contents are not strings of the request: the file validator checks them row by row.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from app.failures import APIError
from app.strings import MAX_STRING_CHARS, BadString, escaped, find_bad_string, string_problem

CODE = "invalid_string"


def invalid_string(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param, code=CODE)


def _check(text: str, param: str, what: str | None = None) -> None:
    problem = string_problem(text)
    if problem is not None:
        raise invalid_string(param, f"{what or param} {problem}.")


def _may_hold_bad_strings(raw: bytes) -> bool:
    """False when no string parsed from this JSON text can break the rule, found with
    single-byte searches (memchr speed; a two-byte search is ~50 times slower here) so that
    a plain body costs no walk: a NUL or a surrogate needs an escape (a backslash), a raw NUL
    (UTF-16 or UTF-32 text) or a 0xED lead byte (a surrogate sent as UTF-8, which json.loads
    lets through), and an over-long string needs a longer body."""
    return len(raw) > MAX_STRING_CHARS or b"\\" in raw or b"\x00" in raw or b"\xed" in raw


def check_json(body: Any, raw: bytes | None = None) -> None:
    if raw is not None and not _may_hold_bad_strings(raw):
        return
    found: BadString | None = find_bad_string(body)
    if found is not None:
        param = found.param()
        raise invalid_string(param, found.message(param))


def _check_form(form: Any) -> None:
    for name, value in form.multi_items():
        _check(name, "multipart field name", f"The multipart field name {escaped(name)}")
        if isinstance(value, UploadFile):
            if value.filename is not None:
                _check(value.filename, name, f"The filename of {name}")
        else:
            _check(value, name)


async def check_request_strings(request: Request) -> None:
    """The string rule for one request (a dependency of every route, app/main.py)."""
    for name, value in request.path_params.items():
        if isinstance(value, str):
            _check(value, f"path.{name}")
    if request.scope.get("query_string"):
        for name, value in request.query_params.multi_items():
            _check(name, "query", f"The query parameter name {escaped(name)}")
            _check(value, f"query.{name}")
    # what FastAPI parsed for the route before solving its dependencies (Starlette caches
    # both on the request): a JSON body, or a multipart or urlencoded form
    parsed = getattr(request, "_json", _UNSET)
    if parsed is not _UNSET:
        check_json(parsed, getattr(request, "_body", None))
    form = getattr(request, "_form", None)
    if form is not None:
        _check_form(form)


_UNSET = object()

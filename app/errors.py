"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}.

The openai SDK picks its exception class from the status code alone (400 BadRequestError,
401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError,
422 UnprocessableEntityError, 429 RateLimitError, >= 500 InternalServerError) and exposes the
body's fields as `.message`, `.type`, `.param` and `.code`. It retries 408, 409, 429 and 5xx
unless the response says `x-should-retry: false`.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.db import DATABASE_RETRY_AFTER_SECONDS, database_unavailable
from app.db_errors import refused_value

# the error type and its makers are web-free (app/failures.py), so the worker can use them
from app.failures import (
    APIError,
)

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}
# A 409 here is a state conflict (a finished job, a file in use): retrying cannot help.
_NOT_RETRYABLE = frozenset({409})


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error response (documented in the OpenAPI schema)."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request: the message names the field (`param`) and what to change",
    401: "No API key, or one that is not valid (once any key exists)",
    403: "The API key may not do this",
    404: "No such object (or it belongs to another project)",
    409: "The object's state does not allow this (a finished job, a file in use, ...)",
    413: "The request body is over TUNERY_MAX_UPLOAD_BYTES",
    429: "Over a quota or the rate limit; retry after `Retry-After` seconds",
    502: "The Hugging Face Hub did not answer (HF_ENDPOINT, the network)",
    503: "A dependency (inference server, database) is unavailable; retry after `Retry-After`",
    507: "TUNERY_MODELS_DIR has too little free space for this pull",
}
# what any /v1 route may answer: a bad parameter, no key, an unknown id, a body over the
# upload limit (checked before routing), the rate limit, the database away
COMMON_ERRORS = (400, 401, 404, 413, 429, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for routes (or routers) that answer these statuses with an ErrorResponse."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(status, "Error")}
        for status in sorted({*COMMON_ERRORS, *statuses})
    }


def download_response(media_type: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route whose 200 is a file (its body is never JSON)."""
    return {
        200: {
            "description": f"The file ({media_type})",
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


def stream_response() -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers JSON, or server-sent events with `stream`."""
    return {
        200: {
            "description": "JSON, or with `stream: true` server-sent events (`data: ...` lines)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }


_BINARY = ("application/octet-stream", "application/gzip")


def document_errors(app: FastAPI) -> None:
    """Drop FastAPI's default 422 from the OpenAPI schema: request validation answers 400
    with an ErrorResponse here (see `_validation_error`), never 422. A download route
    (`download_response`) keeps only its file type for 200."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                default_422 = responses.get("422", {}).get("content", {})
                ref = default_422.get("application/json", {}).get("schema", {}).get("$ref", "")
                if ref.endswith("/HTTPValidationError"):
                    del responses["422"]
                # a download's 200 is the file alone, not also FastAPI's default JSON
                content = responses.get("200", {}).get("content", {})
                if any(media in content for media in _BINARY):
                    content.pop("application/json", None)
        components = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in components and '/HTTPValidationError"' not in str(schema):
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# how long a client waits before it retries when the database is away (a restart, a failover)
def database_unavailable_response(exc: BaseException) -> JSONResponse:
    return JSONResponse(
        error_body(
            503,
            f"The database is unreachable ({type(exc).__name__}); retry in a few seconds. A "
            "write that got this answer may not have been saved: check before repeating it.",
            None,
            "database_unavailable",
        ),
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def error_body(status: int, message: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


def error_headers(status: int, headers: dict[str, str] | None = None) -> dict[str, str] | None:
    if status not in _NOT_RETRYABLE:
        return headers
    return {"x-should-retry": "false", **(headers or {})}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message, exc.param, exc.code),
        status_code=exc.status,
        headers=error_headers(exc.status, exc.headers),
    )


def _param_of(loc: tuple[Any, ...], body: Any, missing: bool) -> str | None:
    """The dotted path of the field at fault, as the client wrote it.

    pydantic puts union members and discriminator tags in `loc` ("constrained-int",
    "lora"); they are parts the client never wrote, so a part that is not in the body is
    dropped (except the last one of a missing field, which is the field's name).
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        source, parts = parts[0], parts[1:]
    else:
        source = "body"
    if source != "body":
        return ".".join(str(p) for p in parts) or None
    kept: list[str] = []
    node = body
    for index, part in enumerate(parts):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif missing and index == len(parts) - 1:
            node = None
        else:
            continue
        kept.append(str(part))
    return ".".join(kept) or None


def _validation_message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "extra_forbidden":
        return "unknown parameter; remove it (see /docs for the accepted fields)"
    return message.removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            first = next(e for e in errors if e.get("type") == "json_invalid")
            detail = (first.get("ctx") or {}).get("error", "invalid JSON")
            message = f"The request body is not valid JSON ({detail}); send a JSON object."
            return JSONResponse(error_body(400, message, None, "invalid_json"), status_code=400)
        # one entry per field: a union reports each member that refused the value
        by_param: dict[str | None, list[str]] = {}
        for error in errors:
            param = _param_of(tuple(error.get("loc", ())), exc.body, error.get("type") == "missing")
            text = _validation_message(error)
            if text not in by_param.setdefault(param, []):
                by_param[param].append(text)
        if not by_param:
            by_param[None] = ["invalid request"]
        param, texts = next(iter(by_param.items()))
        message = f"{param}: {', or '.join(texts)}" if param else ", or ".join(texts)
        if len(by_param) > 1:
            more = len(by_param) - 1
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        return JSONResponse(error_body(400, message, param, "invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = "No such route. The API lives under /v1; see /docs."
        headers = getattr(exc, "headers", None)
        code = param = None
        if exc.status_code == 413:  # a streamed body cut off (RefuseOversize, app/main.py)
            code, param = "file_too_large", "file"
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            message = f"Method not allowed on this route; it accepts {allowed}."
            headers = {**(headers or {}), "Allow": allowed}
        return JSONResponse(
            error_body(exc.status_code, message, param, code),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(sa_exc.SQLAlchemyError)
    @app.exception_handler(psycopg.Error)
    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):
            log.warning("%s %s: database unavailable: %r", request.method, request.url.path, exc)
            return database_unavailable_response(exc)
        refused = refused_value(exc, request)
        if refused is not None:
            # the request's fault, but one the checks in front of the database let through
            log.warning(
                "%s %s: the database refused a value (answered %s, param %s): %r",
                request.method,
                request.url.path,
                refused.status,
                refused.param,
                exc,
            )
            return JSONResponse(
                error_body(refused.status, refused.message, refused.param, refused.code),
                status_code=refused.status,
                headers=error_headers(refused.status),
            )
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _internal_error(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug: the body still has the OpenAI shape so clients raise InternalServerError
        # with a message; Starlette re-raises it afterwards, so the traceback is logged.
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> JSONResponse:
    return JSONResponse(
        error_body(
            500,
            f"Internal server error ({type(exc).__name__}); this is a bug in Tunery, the "
            "server log has the details.",
            None,
            "internal_error",
        ),
        status_code=500,
    )

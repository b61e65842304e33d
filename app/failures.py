"""The two error types, torch-free and web-free, so the worker may raise and catch them.

Failure: the one way a job, an attempt or an evaluation fails with something a user can act
on. The API's job rules, the supervisor, the trainer child and the evaluation child all
raise it, and it is recorded as the job's (or the evaluation's) `error` object exactly as
`as_error()` gives it.

APIError: what a service function raises for a request it refuses; app/errors.py turns it
into the OpenAI-shaped response (the worker calls some services, so it catches it too).
"""

from __future__ import annotations

from typing import Any


class Failure(Exception):
    """`code` names the failure, `message` says what to change, `param` names the field."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}

    @classmethod
    def of(cls, error: dict[str, Any]) -> Failure:
        return cls(str(error["code"]), str(error["message"]), error.get("param"))


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"No {kind} with id '{ident}'.", param=param, code="not_found")


def unauthorized(message: str, code: str = "invalid_api_key") -> APIError:
    """401: no API key, or one that is not valid (AuthenticationError in the SDK)."""
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def permission_denied(message: str, param: str | None = None) -> APIError:
    """403: a valid key that may not do this (PermissionDeniedError in the SDK)."""
    return APIError(403, message, param=param, code="permission_denied")


def rate_limited(message: str, retry_after_seconds: int) -> APIError:
    """429 with Retry-After, which the SDK waits for before it retries (RateLimitError)."""
    return APIError(
        429,
        message,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_seconds)},
    )

"""The one way a job, an attempt or an evaluation fails with something a user can act on.

Torch-free and dependency-free: the API's job rules, the supervisor, the trainer child and
the evaluation child all raise it, and it is recorded as the job's (or the evaluation's)
`error` object exactly as `as_error()` gives it.
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

"""What a fuzzed response must never be, shared by the CI fuzz test
(tests/app/test_schema_fuzz.py) and the fresh-seed hunt's schemathesis CLI run
(scripts/fuzz.py, through scripts/fuzz_hooks.py)."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def no_server_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No 5xx but the documented 503 of a dependency that is down (here the inference
    server), which must say when to retry."""
    if response.status_code == 503:
        assert response.headers.get("retry-after"), "503 without Retry-After"
        error = json.loads(response.content)["error"]
        assert error["message"] and error["code"], error
        return
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"

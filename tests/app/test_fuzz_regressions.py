"""The requests fuzzing found answered with a 500, kept as regression tests on both backends.

Each came from schemathesis: the first three from the fresh-seed runs of issue 18 (Postgres
refused their strings: `internal_error (DataError)`), the last from the CI fuzz test once the
schema described chat messages (a TypeError in app/openai_compat/service.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.app.conftest import Api

pytestmark = pytest.mark.faults

FOUND: list[tuple[str, str, Any, int, str | None]] = [
    # (method, path, JSON body, status, param)
    ("POST", "/v1/evaluations", {"model": "a\x00b", "file": "file-x"}, 400, "model"),
    ("POST", "/v1/evaluations", {"model": "\udbff\x00", "file": "file-x"}, 400, "model"),
    (
        "POST",
        "/v1/predict",
        {"model": "tiny-bert", "inputs": ["\x00", {"\ud800": []}], "parameters": {"": "\x1f"}},
        400,
        "inputs.0",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "tiny-llama", "messages": [{"role": {}, "content": ""}]},
        400,
        "messages.0.role",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "tiny-llama", "messages": [{"role": ["user"], "content": "x"}]},
        400,
        "messages.0.role",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"), FOUND, ids=[f[1] for f in FOUND]
)
def test_a_request_fuzzing_found_is_a_4xx_naming_the_field(
    api: Api, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    # sent as JSON text with escapes, as schemathesis sent them (surrogates cannot be UTF-8)
    response = api.client.request(
        method, path, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_a_nul_in_the_file_part_and_a_non_ascii_field_name_store_an_error_file(
    api: Api,
) -> None:
    """Issue 18: a multipart body with a NUL byte in the file part and a non-ASCII field
    name. The field is ignored; the file is stored in status `error` with the line."""
    body = (
        b'--x\r\nContent-Disposition: form-data; name="\xc3\xa9t\xc3\xa9"\r\n\r\nvalue\r\n'
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="file"\r\n\r\n'
        b'{"text": "a\x00b", "label": "x"}\n{"text": "\\u0000", "label": "y"}\r\n--x--\r\n'
    )
    response = api.client.post(
        "/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 200, response.text
    file = response.json()
    assert file["status"] == "error"
    lines = {error["line"]: error["message"] for error in file["errors"]}
    assert "invalid JSON" in lines[1]  # a raw control character is not JSON
    assert lines[2].startswith("text holds a NUL character")
    assert api.client.get("/v1/files").status_code == 200

"""The string rule at the edge (app/edge.py): NUL, unpaired surrogates and over-long strings
sent to every operation with a string input, in the path, the query, a JSON body (values and
keys, at any depth) or a multipart form, on SQLite and Postgres. Each is a 400
`invalid_string` whose `param` names the field; none is a 5xx; nothing is created.

A URL cannot carry an over-long string (clients and servers cap its length well below the
limit) nor a surrogate (its UTF-8 bytes decode to U+FFFD), so those are tried in bodies.

The operations come from the OpenAPI document, which tests/app/test_tenancy.py keeps equal to
the route table, so a route added later is walked without touching this file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute

from app.edge import check_request_strings
from app.strings import MAX_STRING_CHARS
from tests.app.conftest import Api, app_of

pytestmark = pytest.mark.faults

# (label, raw JSON text of the string) - escapes, as a client that sends them writes them
JSON_HOSTILE = [("NUL", '"a\\u0000b"'), ("high surrogate", '"a\\ud800b"'), ("low", '"\\udfffz"')]
LISTS = ("/v1/files", "/v1/fine_tuning/jobs", "/v1/evaluations", "/v1/deployments")


@dataclass
class Operation:
    method: str
    path: str
    path_params: list[str]
    query_params: list[str]
    body: dict[str, Any] | None  # the request body's schema
    media: str | None


def operations(document: dict[str, Any]) -> Iterator[Operation]:
    schemas = document["components"]["schemas"]
    for path, methods in document["paths"].items():
        for method, spec in methods.items():
            params = spec.get("parameters", [])
            content = spec.get("requestBody", {}).get("content", {})
            media = next(iter(content), None)
            body = content[media]["schema"] if media else None
            if body is not None and "$ref" in body:
                body = schemas[body["$ref"].rsplit("/", 1)[1]]
            yield Operation(
                method.upper(),
                path,
                [p["name"] for p in params if p["in"] == "path"],
                [p["name"] for p in params if p["in"] == "query"],
                body,
                media,
            )


def url(op: Operation, hostile_param: str | None = None, value: str = "%00") -> str:
    path = op.path
    for name in op.path_params:
        path = path.replace(f"{{{name}}}", f"x{value}y" if name == hostile_param else "x")
    return path


def assert_refused(response: Any, param: str | None, where: str) -> None:
    assert response.status_code == 400, (where, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == "invalid_string", (where, error)
    assert error["param"] == param, (where, error)
    assert param is None or param in error["message"], (where, error)


def counts(api: Api) -> dict[str, int]:
    return {path: len(api.client.get(path).json()["data"]) for path in LISTS}


def test_every_route_runs_the_string_rule(api: Api) -> None:
    for route in app_of(api.client).routes:
        if isinstance(route, APIRoute):
            calls = [d.call for d in route.dependant.dependencies]
            assert check_request_strings in calls, route.path


def test_hostile_strings_in_paths_and_queries_are_400s_naming_them(api: Api) -> None:
    document = app_of(api.client).openapi()
    before = counts(api)
    walked = 0
    for op in operations(document):
        for name in op.path_params:
            response = api.client.request(op.method, url(op, name))
            assert_refused(response, f"path.{name}", f"{op.method} {op.path}")
            # a surrogate's UTF-8 bytes decode to U+FFFD in a URL: valid, never a 5xx
            response = api.client.request(op.method, url(op, name, "%ED%A0%80"))
            assert response.status_code < 500, (op.path, response.text)
            walked += 1
        for name in op.query_params:
            where = f"{op.method} {op.path}?{name}"
            response = api.client.request(op.method, url(op), params={name: "a\x00b"})
            assert_refused(response, f"query.{name}", where)
            walked += 1
    response = api.client.get("/v1/files", params={"a\x00": "1"})
    assert_refused(response, "query", "a query parameter's name")
    assert walked >= 20
    assert counts(api) == before


def test_hostile_strings_in_json_bodies_are_400s_naming_the_field(api: Api) -> None:
    document = app_of(api.client).openapi()
    before = counts(api)
    walked = 0
    for op in operations(document):
        if op.media != "application/json" or op.body is None:
            continue
        field = next(iter(op.body["properties"]))
        for label, text in JSON_HOSTILE:
            where = f"{op.method} {op.path} ({label})"
            cases = [
                (f'{{"{field}": {text}}}', field),
                (
                    f'{{"{field}": {{"deep": ["fine", {{"deeper": {text}}}]}}}}',
                    f"{field}.deep.1.deeper",
                ),
                (f'{{"{field}": "fine", "extra": [{{{text}: 1}}]}}', None),  # a key
            ]
            for body, param in cases:
                response = api.client.request(
                    op.method, url(op), content=body, headers={"content-type": "application/json"}
                )
                if param is None:  # the key, escaped as JSON escapes it
                    param = "extra.0." + text.strip('"')
                assert_refused(response, param, where)
        long = json.dumps({field: "x" * (MAX_STRING_CHARS + 1)})
        response = api.client.request(
            op.method, url(op), content=long, headers={"content-type": "application/json"}
        )
        assert_refused(response, field, f"{op.method} {op.path} (long)")
        walked += 1
    assert walked >= 7  # jobs, deployments, both predicts, evaluations, both completions
    assert counts(api) == before


def multipart(parts: list[tuple[bytes, bytes, bytes | None]]) -> bytes:
    """A multipart body written byte for byte: (field name, content, filename or None)."""
    out = b""
    for name, content, filename in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"--x\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--x--\r\n"


ROWS = b"".join(b'{"text": "row %d", "label": "%s"}\n' % (i, b"ab"[i % 2 :][:1]) for i in range(12))

FILE = (b"file", ROWS, b"train.jsonl")


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([(b"file", ROWS, b"tr\x00ain.jsonl")], "file"),
        ([FILE, (b"purpose", b"fine\x00tune", None)], "purpose"),
        ([FILE, (b"pur\x00pose", b"fine-tune", None)], "multipart field name"),
        ([FILE, (b"\xc3\xa9\x00", b"x", None)], "multipart field name"),
        ([FILE, (b"purpose", b"p" * (MAX_STRING_CHARS + 1), None)], "purpose"),
    ],
    ids=["filename", "form value", "field name", "non-ASCII field name", "long form value"],
)
def test_hostile_strings_in_a_multipart_upload_are_400s_naming_them(
    api: Api, parts: list[tuple[bytes, bytes, bytes | None]], param: str
) -> None:
    before = counts(api)
    response = api.client.post(
        "/v1/files",
        content=multipart(parts),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert_refused(response, param, str(parts))
    assert counts(api) == before


def test_a_urlencoded_form_value_is_checked_too(api: Api) -> None:
    response = api.client.post(
        "/v1/files",
        content=b"purpose=fine%00tune",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_refused(response, "purpose", "urlencoded purpose")


def test_file_contents_are_the_validators_business(api: Api) -> None:
    """A NUL or a surrogate inside an uploaded file is no 400: the file is stored with
    status `error` and the line (app/files/formats.py), and lists still read."""
    rows = ROWS.decode().splitlines()
    rows[3] = json.dumps({"text": "bad\u0000row", "label": "a"})
    rows[5] = '{"text": "fine", "label": "b\\ud800"}'
    response = api.client.post(
        "/v1/files",
        files={"file": ("train.jsonl", "\n".join(rows).encode())},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    file = response.json()
    assert file["status"] == "error"
    assert file["status_details"].startswith("line 4: text holds a NUL character")
    assert [e["line"] for e in file["errors"]] == [4, 6]
    assert "label holds an unpaired surrogate" in file["errors"][1]["message"]
    assert api.client.get("/v1/files").status_code == 200
    assert api.client.get(f"/v1/files/{file['id']}").status_code == 200

    csv = b"text,label\n" + b"".join(b"row %d,a\n" % i for i in range(11)) + b"r\x00w,b\n"
    response = api.client.post(
        "/v1/files", files={"file": ("train.csv", csv)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status_details"].startswith("line 13: text holds a NUL character")


def test_good_unicode_passes_the_edge(api: Api) -> None:
    """Non-ASCII text, pairs sent as escapes and raw UTF-8 alike, is not refused."""
    body = '{"model": "tiny-bert", "inputs": ["\\ud83d\\ude00 caf\\u00e9", "中文 ☃"]}'
    response = api.client.post(
        "/v1/predict", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 503, response.text  # past the edge: no inference server

"""The last line of defence (app/db_errors.py): a value the database refuses is a 4xx naming
the field, never a 500, even where the checks in front of the database let it through.

The HTTP tests switch the string rule off (app.dependency_overrides) to play such a gap:
Postgres refuses a NUL in text, in an insert, a keyset cursor, a path id and on the hot
status read, which runs on psycopg directly (app/reads.py). SQLite stores NUL, so there the
same requests simply are not 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from app.db_errors import refused_value
from app.edge import check_request_strings
from app.ids import new_id
from app.tables import ProjectRow
from tests.app.conftest import Api, app_of
from tests.support.backends import Backend

pytestmark = pytest.mark.faults


@pytest.fixture
def no_edge(api: Api) -> Iterator[Api]:
    async def off() -> None:
        return None

    app = app_of(api.client)
    app.dependency_overrides[check_request_strings] = off
    yield api
    app.dependency_overrides.clear()


# (method, path, JSON body, the param the answer must name)
GAPS = [
    ("POST", "/v1/evaluations", {"model": "tiny-bert\x00", "file": "file-x"}, "model"),
    ("POST", "/v1/deployments", {"model": "tiny\x00bert"}, "model"),
    ("GET", "/v1/files?after=file-%00", None, "query.after"),
    ("GET", "/v1/files/file-%00x", None, "path.file_id"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-%00x", None, "path.job_id"),  # psycopg, no ORM
    ("POST", "/v1/fine_tuning/jobs/ftjob-%00x/cancel", None, "path.job_id"),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), GAPS, ids=[g[1] for g in GAPS])
def test_a_value_the_database_refuses_is_a_400_naming_it(
    no_edge: Api, backend: Backend, method: str, path: str, body: object, param: str
) -> None:
    response = no_edge.client.request(method, path, json=body)
    assert response.status_code < 500, response.text
    if backend.name == "postgres":
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_value" and error["param"] == param, error
        assert "NUL" in error["message"] and param in error["message"], error


def test_integrity_and_data_errors_map_to_4xx(migrated_database_url: str, backend: Backend) -> None:
    engine = create_engine(migrated_database_url)
    insert = text("INSERT INTO projects (id, name, created_at) VALUES (:id, :name, 0)")
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": new_id("proj"), "name": "taken"})
        with pytest.raises(sa_exc.IntegrityError) as duplicate, engine.begin() as conn:
            conn.execute(insert, {"id": new_id("proj"), "name": "taken"})
        refused = refused_value(duplicate.value)
        assert refused is not None and refused.status == 409 and refused.code == "conflict"
        assert refused.param == "name", refused

        if backend.name == "postgres":  # SQLite does not enforce VARCHAR lengths
            too_long = "p" * (ProjectRow.__table__.c.name.type.length + 1)  # type: ignore[attr-defined]
            with pytest.raises(sa_exc.DataError) as long_name, engine.begin() as conn:
                conn.execute(insert, {"id": new_id("proj"), "name": too_long})
            refused = refused_value(long_name.value)
            assert refused is not None and refused.status == 400, refused
            assert refused.param == "name" and "character varying(128)" in refused.message

        with pytest.raises(sa_exc.DBAPIError) as syntax, engine.begin() as conn:
            conn.execute(text("SELEC 1"))
        assert refused_value(syntax.value) is None  # a bug stays a 500
    finally:
        engine.dispose()

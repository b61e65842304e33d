"""The hot read path: job status, which every client polls, and the deployments that serve.

A request through the ORM in a worker thread costs four database round trips (pool ping,
BEGIN, SELECT, ROLLBACK) plus a thread hop. On Postgres this reads the row on the event loop
with psycopg's async pool in autocommit: one round trip, a prepared statement, no thread.
On SQLite it runs on the event loop too, on a connection of its own: a primary-key read
takes ~15 us there, where a pooled SQLAlchemy connection in a thread took ~0.8 ms of the
API's one core. In WAL mode readers never wait for writers; in the rare case the file is
busy anyway (a checkpoint, recovery after a crash), that request waits in a thread instead
of blocking the loop. Writes never come here; they go through sessions and the services.
None of these reads opens a transaction (autocommit), so none can hold a lock.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import Table, text
from sqlalchemy.engine import Engine, make_url

from app.tables import DeploymentRow, JobRow, ProjectRow


class Query:
    """One SELECT of a table's columns, written once with :named parameters: sqlite3 and
    SQLAlchemy's text() take them as they are, psycopg as %(named)s."""

    def __init__(self, table: Any, where: str) -> None:
        self.table: Table = table
        self.columns = [c.name for c in self.table.columns]
        self.sql = f"SELECT {', '.join(self.columns)} FROM {self.table.name} WHERE {where}"
        self.pyformat = re.sub(r":(\w+)", r"%(\1)s", self.sql)
        # typed: SQLAlchemy turns each column's value into what the ORM would hold
        self.typed = text(self.sql).columns(*self.table.columns)

    def row(self, values: Any) -> SimpleNamespace:
        return SimpleNamespace(**dict(zip(self.columns, values, strict=True)))


# every query is scoped to the caller's project: another project's row reads as missing
JOB = Query(JobRow.__table__, "id = :id AND project_id = :project_id")
DEPLOYMENT = Query(
    DeploymentRow.__table__, "id = :id AND project_id = :project_id AND deleted = false"
)
DEPLOYMENTS = Query(
    DeploymentRow.__table__,
    "project_id = :project_id AND deleted = false ORDER BY created_at DESC",
)
PROJECT = Query(ProjectRow.__table__, "id = :project_id")


class Reads(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def rows(self, query: Query, params: dict[str, Any]) -> list[Any]:
        """The rows' columns as attributes."""

    async def job(self, job_id: str, project_id: str) -> Any | None:
        """The job row, or None (also for another project's job)."""

    async def deployment(self, dep_id: str, project_id: str) -> Any | None:
        """The deployment row unless deleted, or None (also for another project's)."""

    async def deployments(self, project_id: str) -> list[Any]:
        """The project's deployments that are not deleted, newest first."""

    async def project(self, project_id: str) -> Any | None:
        """The project row (its usage counts), or None."""


class _Queries:
    """The reads, on top of each backend's rows()."""

    async def rows(self, query: Query, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    async def job(self, job_id: str, project_id: str) -> Any | None:
        found = await self.rows(JOB, {"id": job_id, "project_id": project_id})
        return found[0] if found else None

    async def deployment(self, dep_id: str, project_id: str) -> Any | None:
        found = await self.rows(DEPLOYMENT, {"id": dep_id, "project_id": project_id})
        return found[0] if found else None

    async def deployments(self, project_id: str) -> list[Any]:
        return await self.rows(DEPLOYMENTS, {"project_id": project_id})

    async def project(self, project_id: str) -> Any | None:
        found = await self.rows(PROJECT, {"project_id": project_id})
        return found[0] if found else None


class ThreadReads(_Queries):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _rows(self, query: Query, params: dict[str, Any]) -> list[Any]:
        with self.engine.connect() as conn:
            found = conn.execute(query.typed, params).all()
        return [query.row(values) for values in found]

    async def rows(self, query: Query, params: dict[str, Any]) -> list[Any]:
        return await asyncio.to_thread(self._rows, query, params)


class SqliteReads(_Queries):
    def __init__(self, path: str, engine: Engine) -> None:
        self.path = path
        self.busy = ThreadReads(engine)  # waits out a busy file, in a thread
        self.conn: sqlite3.Connection | None = None
        self.dialect = engine.dialect
        self.processors: dict[str, list[Any]] = {}

    def _processors(self, table: Table) -> list[Any]:
        """What SQLAlchemy does to each column's value (JSON text to objects, 0/1 to bools)."""
        found = self.processors.get(table.name)
        if found is None:
            found = self.processors[table.name] = [
                c.type.dialect_impl(self.dialect).result_processor(self.dialect, None)
                for c in table.columns
            ]
        return found

    async def open(self) -> None:
        return None  # connected at the first read: never creates a file before migrations

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def rows(self, query: Query, params: dict[str, Any]) -> list[Any]:
        try:
            if self.conn is None:
                # timeout=0: a busy file raises at once rather than block the event loop
                self.conn = sqlite3.connect(
                    self.path, timeout=0, isolation_level=None, check_same_thread=False
                )
            found = self.conn.execute(query.sql, params).fetchall()
        except sqlite3.OperationalError:
            return await self.busy.rows(query, params)
        processors = self._processors(query.table)
        return [
            query.row(
                value if process is None else process(value)
                for process, value in zip(processors, values, strict=True)
            )
            for values in found
        ]


class PostgresReads(_Queries):
    def __init__(self, database_url: str, max_size: int = 16) -> None:
        from psycopg_pool import AsyncConnectionPool

        url = make_url(database_url).set(drivername="postgresql")
        self.pool = AsyncConnectionPool(
            url.render_as_string(hide_password=False),
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            # no check on checkout: it would cost a round trip per request. A connection
            # broken by a database restart fails its one request and the pool drops it.
            open=False,
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def rows(self, query: Query, params: dict[str, Any]) -> list[Any]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query.pyformat, params)  # prepared after 5 uses
            found = await cursor.fetchall()
        return [query.row(values) for values in found]


def make_reads(database_url: str, engine: Engine) -> Reads:
    if database_url.startswith("postgresql"):
        return PostgresReads(database_url)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return SqliteReads(url.database, engine)
    return ThreadReads(engine)

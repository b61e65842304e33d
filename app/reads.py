"""The hot read path: job status, which every client polls.

A request through the ORM in a worker thread costs four database round trips (pool ping,
BEGIN, SELECT, ROLLBACK) plus a thread hop. On Postgres this reads the row on the event loop
with psycopg's async pool in autocommit: one round trip, a prepared statement, no thread.
On SQLite it runs on the event loop too, on a connection of its own: a primary-key read
takes ~15 us there, where a pooled SQLAlchemy connection in a thread took ~0.8 ms of the
API's one core. In WAL mode readers never wait for writers; in the rare case the file is
busy anyway (a checkpoint, recovery after a crash), that request waits in a thread instead
of blocking the loop. Writes never come here; they go through sessions and the services.
"""

from __future__ import annotations

import asyncio
import sqlite3
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine, make_url

from app.tables import JobRow

_JOB_COLUMNS = [c.name for c in JobRow.__table__.columns]
# scoped to the caller's project in the same query: another project's job reads as missing
_JOB_SQL = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = %s AND project_id = %s"
_JOB_SQL_QMARK = _JOB_SQL.replace("%s", "?")


class Reads(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def job(self, job_id: str, project_id: str) -> Any | None:
        """The job row's columns as attributes, or None (also for another project's job)."""


class ThreadReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _job(self, job_id: str, project_id: str) -> Any | None:
        columns = JobRow.__table__.c
        with self.engine.connect() as conn:
            query = select(JobRow.__table__).where(
                columns.id == job_id, columns.project_id == project_id
            )
            row = conn.execute(query).mappings().first()
        return None if row is None else SimpleNamespace(**row)

    async def job(self, job_id: str, project_id: str) -> Any | None:
        return await asyncio.to_thread(self._job, job_id, project_id)


class SqliteReads:
    def __init__(self, path: str, engine: Engine) -> None:
        self.path = path
        self.busy = ThreadReads(engine)  # waits out a busy file, in a thread
        self.conn: sqlite3.Connection | None = None
        # what SQLAlchemy does to each column's value (JSON text to objects, 0/1 to bools)
        dialect = engine.dialect
        self.processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            for c in JobRow.__table__.columns
        ]

    async def open(self) -> None:
        return None  # connected at the first read: never creates a file before migrations

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def job(self, job_id: str, project_id: str) -> Any | None:
        try:
            if self.conn is None:
                # timeout=0: a busy file raises at once rather than block the event loop
                self.conn = sqlite3.connect(
                    self.path, timeout=0, isolation_level=None, check_same_thread=False
                )
            row = self.conn.execute(_JOB_SQL_QMARK, (job_id, project_id)).fetchone()
        except sqlite3.OperationalError:
            return await self.busy.job(job_id, project_id)
        if row is None:
            return None
        values = (
            value if process is None else process(value)
            for process, value in zip(self.processors, row, strict=True)
        )
        return SimpleNamespace(**dict(zip(_JOB_COLUMNS, values, strict=True)))


class PostgresReads:
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

    async def job(self, job_id: str, project_id: str) -> Any | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_JOB_SQL, (job_id, project_id))  # prepared after 5 uses
            row = await cursor.fetchone()
        return None if row is None else SimpleNamespace(**dict(zip(_JOB_COLUMNS, row, strict=True)))


def make_reads(database_url: str, engine: Engine) -> Reads:
    if database_url.startswith("postgresql"):
        return PostgresReads(database_url)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return SqliteReads(url.database, engine)
    return ThreadReads(engine)

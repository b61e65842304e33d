"""The hot read path: job status, which every client polls.

A request through the ORM in a worker thread costs four database round trips (pool ping,
BEGIN, SELECT, ROLLBACK) plus a thread hop. On Postgres this reads the row on the event loop
with psycopg's async pool in autocommit: one round trip, a prepared statement, no thread.
Elsewhere (SQLite) the same query runs in a thread on an autocommit connection. Writes never
come here; they go through sessions and the services.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine, make_url

from app.tables import JobRow

_JOB_COLUMNS = [c.name for c in JobRow.__table__.columns]
# scoped to the caller's project in the same query: another project's job reads as missing
_JOB_SQL = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = %s AND project_id = %s"


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
    return ThreadReads(engine)

"""The job-status read path on SQLite reads what the ORM reads, scoped to the project, and
waits out a busy file in a thread rather than on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from sqlalchemy.orm import Session

from app.db import make_engine
from app.reads import SqliteReads, ThreadReads, make_reads
from app.tables import JobRow


def test_sqlite_reads_match_the_orm_and_fall_back_when_busy(migrated_sqlite_url: str) -> None:
    url = migrated_sqlite_url
    engine = make_engine(url)
    with Session(engine) as session:
        session.add(
            JobRow(
                id="ftjob-1",
                project_id="proj-a",
                model="tiny-bert",
                task="classification",
                status="failed",
                training_file="file-1",
                seed=3,
                hyperparameters={"n_epochs": 2, "learning_rate": 1e-4},
                training_type={"type": "lora", "r": 8},
                method={"type": "supervised"},
                error={"code": "nan_loss", "message": "lower it", "param": None},
                user_metadata={"team": "x"},
                cancel_requested=True,
            )
        )
        session.commit()
    reads = make_reads(url, engine)
    assert isinstance(reads, SqliteReads)

    async def read(project: str) -> Any:
        return await reads.job("ftjob-1", project)

    fast = asyncio.run(read("proj-a"))
    orm = asyncio.run(ThreadReads(engine).job("ftjob-1", "proj-a"))
    assert vars(fast) == vars(orm)
    assert fast.error == {"code": "nan_loss", "message": "lower it", "param": None}
    assert fast.hyperparameters["learning_rate"] == 1e-4 and fast.cancel_requested is True
    assert asyncio.run(read("proj-b")) is None  # another project's job reads as missing
    assert asyncio.run(reads.job("ftjob-nope", "proj-a")) is None

    class Busy:
        def execute(self, *_: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        def close(self) -> None:
            pass

    reads.conn = Busy()  # type: ignore[assignment]
    assert vars(asyncio.run(read("proj-a"))) == vars(orm)  # answered from the thread path
    asyncio.run(reads.close())
    engine.dispose()

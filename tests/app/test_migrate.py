"""The migrations build exactly the schema app/tables.py describes, and carry data across.

On SQLite and, where reachable, on Postgres: a column added to a table without its
migration (or one with a different type, default or index) fails here, not in production.
"""

from __future__ import annotations

import time

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

import app.tables  # noqa: F401  (registers the tables on Base.metadata)
from app.db import Base, make_engine
from app.migrate import upgrade


def test_the_migrated_schema_is_the_one_the_code_declares(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], f"app/tables.py and migrations/ disagree: {differences}"


def test_rows_written_before_0006_keep_working(database_url: str) -> None:
    upgrade(database_url, "0005")
    engine = make_engine(database_url)
    now = int(time.time())
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, model, task, status, training_file, seed, attempt, "
                    "created_at, created_ns, cancel_requested, hyperparameters, training_type, "
                    "method, result_files, progress) VALUES ('ftjob-old', 'tiny-bert', "
                    "'classification', 'running', 'file-x', 1, 1, :now, :ns, false, '{}', "
                    "'{}', '{}', '[]', '{}')"
                ),
                {"now": now, "ns": now * 10**9},
            )
            conn.execute(
                text(
                    "INSERT INTO evaluations (id, model, file_id, task, status, attempt, "
                    "created_at, created_ns) VALUES ('eval-old', 'tiny-bert', 'file-x', "
                    "'classification', 'queued', 0, :now, :ns)"
                ),
                {"now": now, "ns": now * 10**9},
            )
        upgrade(database_url)
        with engine.connect() as conn:
            job = conn.execute(text("SELECT workers_lost FROM jobs")).one()
            evaluation = conn.execute(
                text("SELECT workers_lost, enqueued_at FROM evaluations")
            ).one()
    finally:
        engine.dispose()
    assert tuple(job) == (0,)
    assert tuple(evaluation) == (0, None)  # never sent by the reconciler: it is sent again

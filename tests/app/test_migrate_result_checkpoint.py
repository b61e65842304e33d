"""Revision 08: the default export became the final model and min_delta relative; jobs
created before it keep what they exported and what they would select on a resume."""

from __future__ import annotations

import json
import time
from typing import Any

from alembic import command
from sqlalchemy import text

from app.db import make_engine
from app.jobs.spec import Hyperparameters
from app.migrate import alembic_config, upgrade

OLD_EARLY = {"patience": 2, "metric": "eval_loss", "min_delta": 0.05}


def _insert_job(conn: Any, job_id: str, status: str, hyperparameters: dict[str, Any]) -> None:
    now = int(time.time())
    conn.execute(
        text(
            "INSERT INTO jobs (id, model, task, status, training_file, seed, attempt, "
            "created_at, created_ns, cancel_requested, hyperparameters, training_type, "
            "method, result_files, progress, workers_lost, fine_tuned_model, best_step) "
            "VALUES (:id, 'tiny-bert', 'classification', :status, 'file-x', 1, 1, :now, :ns, "
            "false, :hp, '{}', '{}', '[]', '{}', 0, :model, :best)"
        ),
        {
            "id": job_id,
            "status": status,
            "now": now,
            "ns": now * 10**9 + len(job_id),
            "hp": json.dumps(hyperparameters),
            "model": f"ft:tiny-bert::{job_id}" if status == "succeeded" else None,
            "best": 45 if status == "succeeded" else None,
        },
    )


def _insert_started(conn: Any, job_id: str, n_validation: int, seq: int) -> None:
    conn.execute(
        text(
            "INSERT INTO job_events (seq, id, job_id, created_at, level, type, message, data) "
            "VALUES (:seq, :id, :job, 0, 'info', 'message', 'Training started: ...', :data)"
        ),
        {
            "seq": seq,
            "id": f"ftevent-{seq}",
            "job": job_id,
            "data": json.dumps({"n_train": 720, "n_validation": n_validation}),
        },
    )


def _jobs(database_url: str) -> dict[str, dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, hyperparameters, result_step, result_reason, n_validation "
                    "FROM jobs ORDER BY id"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        row[0]: {
            "hyperparameters": row[1] if isinstance(row[1], dict) else json.loads(row[1]),
            "result": (row[2], row[3], row[4]),
        }
        for row in rows
    }


def test_old_jobs_keep_what_they_exported_and_would_select(database_url: str) -> None:
    upgrade(database_url, "0007")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            _insert_job(
                conn,
                "ftjob-done",
                "succeeded",
                {"n_epochs": 3, "best_metric": "eval_loss", "early_stopping": OLD_EARLY},
            )
            # a row written before best_metric was written back, and a paused job that a
            # resume would continue under the new code
            _insert_job(conn, "ftjob-paused", "paused", {"n_epochs": 3})
            _insert_started(conn, "ftjob-done", 90, seq=1)
            _insert_started(conn, "ftjob-done", 80, seq=2)  # a later attempt: the last counts
    finally:
        engine.dispose()

    upgrade(database_url)
    jobs = _jobs(database_url)
    done, paused = jobs["ftjob-done"], jobs["ftjob-paused"]
    # it exported the best evaluation by best_metric, and says so
    assert done["result"] == (45, "best_metric", 80)
    assert paused["result"] == (None, None, None)
    # the absolute min_delta stays absolute; the old default selection stays on
    assert done["hyperparameters"]["early_stopping"] == {**OLD_EARLY, "relative": False}
    assert paused["hyperparameters"] == {"n_epochs": 3, "best_metric": "eval_loss"}
    for job in (done, paused):
        hp = Hyperparameters.model_validate(job["hyperparameters"])
        assert hp.selection_metric == "eval_loss" and hp.result_reason == "best_metric"
    early = Hyperparameters.model_validate(done["hyperparameters"]).early_stopping
    assert early is not None and early.threshold(0.2) == 0.05

    # and back: the old code knows no "relative" key (it refuses unknown fields)
    command.downgrade(alembic_config(database_url), "0007")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT hyperparameters FROM jobs WHERE id = 'ftjob-done'")
            ).scalar_one()
    finally:
        engine.dispose()
    stored = stored if isinstance(stored, dict) else json.loads(stored)
    assert stored["early_stopping"] == OLD_EARLY

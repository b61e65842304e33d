"""Celery tasks: thin. Take ids, let the runner claim and supervise."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from app import db
from app.broker import RUN_EVALUATION, RUN_JOB, make_celery
from app.settings import get_settings
from app.storage import get_store
from worker.evaluation.runner import EvaluationRunner
from worker.supervisor import JobRunner

app = make_celery()


@lru_cache
def _runner() -> JobRunner:
    settings = get_settings()
    make_session: sessionmaker[Session] = sessionmaker(
        bind=db.make_engine(settings.database_url), expire_on_commit=False, autoflush=False
    )
    return JobRunner(settings, make_session, get_store(settings))


@app.task(name=RUN_JOB, acks_late=True)
def run_job(job_id: str) -> str:
    return _runner().run(job_id)


@lru_cache
def _evaluation_runner() -> EvaluationRunner:
    settings = get_settings()
    make_session: sessionmaker[Session] = sessionmaker(
        bind=db.make_engine(settings.database_url), expire_on_commit=False, autoflush=False
    )
    return EvaluationRunner(settings, make_session, get_store(settings))


@app.task(name=RUN_EVALUATION, acks_late=True)
def run_evaluation(evaluation_id: str) -> str:
    return _evaluation_runner().run(evaluation_id)

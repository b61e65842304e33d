"""Database engine and sessions. Commit happens at the boundary (request end, task end)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        # API, worker and migrations share one file: WAL lets readers run beside a writer,
        # busy_timeout makes a writer wait instead of failing with "database is locked".
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    from app.settings import get_settings

    return make_engine(url or get_settings().database_url)


@lru_cache
def _sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A unit of work for tasks and scripts: commit on success, roll back on error."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


DATABASE_RETRY_AFTER_SECONDS = 2
# SQLite's transient refusals (a writer held the lock past busy_timeout, a file gone away)
_SQLITE_TRANSIENT = ("database is locked", "unable to open database", "disk i/o error")


def database_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database could not be reached (or was too busy) rather
    than a bug: a lost or refused connection, a pool that timed out, a locked SQLite."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        original: BaseException | None = exc.orig
    else:
        original = exc
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(original, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(original, sqlite3.OperationalError):
        return str(original).lower().startswith(_SQLITE_TRANSIENT)
    return False

"""Which backends the suite runs on: SQLite + the no-server broker always, Postgres + Redis
when they are reachable. The terminal summary says which were covered."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_ADMIN_URL = os.environ.get(
    "TUNERY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TUNERY_TEST_REDIS", "redis://127.0.0.1:6379/0")

COVERED: set[str] = set()
SKIPPED: dict[str, str] = {}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def postgres_reachable() -> bool:
    if not _port_open("127.0.0.1", 5432):
        return False
    try:
        import psycopg

        with psycopg.connect(_plain(PG_ADMIN_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def redis_reachable() -> bool:
    if not _port_open("127.0.0.1", 6379):
        return False
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    except Exception:
        return False


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database for one test (or module), dropped afterwards: empty, or a copy of the
    database whose URL is `template` (see migrated_template)."""
    import psycopg

    name = f"tunery_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
    with psycopg.connect(_plain(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        from app import db

        db.get_engine.cache_clear()
        with psycopg.connect(_plain(PG_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_template(name: str, folder: Path) -> Iterator[str]:
    """A database with every migration applied by alembic (app.migrate.upgrade), to copy
    for each test that needs the schema: a copy takes milliseconds (SQLite) or a fifth of a
    second (Postgres, CREATE DATABASE ... TEMPLATE), the migrations about a second."""
    from app.migrate import upgrade

    if name == "sqlite":
        url = f"sqlite:///{folder / 'template.db'}"
        upgrade(url)  # its engine is disposed: nothing holds the file open
        yield url
        return
    with fresh_postgres_database() as url:
        upgrade(url)  # no connection stays open: CREATE DATABASE ... TEMPLATE needs none
        yield url


def copy_sqlite_database(source_url: str, target: Path) -> str:
    """A copy of the SQLite database at `source_url` (whatever its journal holds) at
    `target`, as a URL."""
    import sqlite3

    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        closing(sqlite3.connect(source_url.removeprefix("sqlite:///"))) as source,
        closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
    return f"sqlite:///{target}"


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" or "postgres"

    @property
    def label(self) -> str:
        return "SQLite + filesystem broker" if self.name == "sqlite" else "Postgres + Redis"

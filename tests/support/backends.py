"""Which backends the suite runs on: SQLite + the no-server broker always, Postgres + Redis
when they are reachable. The terminal summary says which were covered."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database for one test (or module); dropped afterwards."""
    import psycopg

    name = f"tunery_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_plain(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        from app import db

        db.get_engine.cache_clear()
        with psycopg.connect(_plain(PG_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" or "postgres"

    @property
    def label(self) -> str:
        return "SQLite + filesystem broker" if self.name == "sqlite" else "Postgres + Redis"

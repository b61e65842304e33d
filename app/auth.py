"""API keys and projects.

A key is `tun-` + 40 random URL-safe characters, shown once; only its sha256 is stored.
Every key belongs to a project, and everything a request touches is scoped to the key's
project. Until the first key is created, requests run in the open "default" project: that
is the embedded single-user mode, which the CLI allows only on a loopback address.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.failures import APIError, unauthorized
from app.ids import new_id
from app.tables import ApiKeyRow, ProjectRow

DEFAULT_PROJECT = "default"
KEY_PREFIX = "tun-"
# how long a key lookup (hit or "no keys exist") is trusted before it is read again:
# a revoked key stops working within this many seconds in every API process
CACHE_SECONDS = 5.0


def quota_exceeded(message: str, *, param: str | None = None, retry_after: int = 60) -> APIError:
    """429 for a project over one of its quotas (docs/security.md); Retry-After in seconds."""
    return APIError(
        429, message, param=param, code="quota_exceeded", headers={"Retry-After": str(retry_after)}
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_project(session: Session, name: str) -> ProjectRow:
    row = session.scalar(select(ProjectRow).where(ProjectRow.name == name))
    if row is None:
        row = ProjectRow(id=new_id("proj"), name=name)
        session.add(row)
        session.flush()
    return row


def create_key(session: Session, project_name: str) -> tuple[ApiKeyRow, str]:
    name = project_name.strip()
    if not name or len(name) > 128:
        raise APIError(400, "project name must be 1 to 128 characters", param="project")
    project = ensure_project(session, name)
    key = KEY_PREFIX + secrets.token_urlsafe(30)
    row = ApiKeyRow(
        id=new_id("key"), project_id=project.id, key_hash=hash_key(key), prefix=key[:12]
    )
    session.add(row)
    session.flush()
    return row, key


def install_key(session: Session, project_name: str, key: str) -> ApiKeyRow:
    """Make `key` (chosen by the operator) a valid key of the project, once."""
    if len(key) < 20:
        raise APIError(400, "a bootstrap API key must be at least 20 characters", param="key")
    digest = hash_key(key)
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
    if row is None:
        project = ensure_project(session, project_name)
        row = ApiKeyRow(id=new_id("key"), project_id=project.id, key_hash=digest, prefix=key[:12])
        session.add(row)
        session.flush()
    return row


def list_keys(session: Session) -> list[tuple[ApiKeyRow, ProjectRow]]:
    query = (
        select(ApiKeyRow, ProjectRow)
        .join(ProjectRow, ApiKeyRow.project_id == ProjectRow.id)
        .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    )
    return [(k, p) for k, p in session.execute(query).all()]


def revoke_key(session: Session, key_id_or_prefix: str) -> ApiKeyRow:
    row = session.get(ApiKeyRow, key_id_or_prefix)
    if row is None:
        matches = session.scalars(
            select(ApiKeyRow).where(ApiKeyRow.prefix == key_id_or_prefix)
        ).all()
        if len(matches) != 1:
            raise APIError(404, f"No API key with id or prefix '{key_id_or_prefix}'.")
        row = matches[0]
    if row.revoked_at is None:
        row.revoked_at = int(time.time())
    return row


def any_key_exists(session: Session) -> bool:
    """Revoked keys count: revoking the last key must not reopen the service."""
    return session.scalar(select(ApiKeyRow.id).limit(1)) is not None


def active_key_count(session: Session) -> int:
    query = select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
    return int(session.scalar(query) or 0)


@dataclass(frozen=True)
class Principal:
    project_id: str
    key_id: str | None  # None in open mode


class KeyResolver:
    """Bearer token -> Principal, with a short cache so auth costs no query per request."""

    def __init__(
        self, make_session: sessionmaker[Session], cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.make_session = make_session
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._hits: dict[str, tuple[float, Principal | None]] = {}
        self._open: tuple[float, str | None] = (0.0, None)  # (checked at, default project id)

    def _open_project(self) -> str | None:
        """The default project's id while no key was ever made; None once one was."""
        checked, project = self._open
        if time.monotonic() - checked < self.cache_seconds:
            return project
        with self.make_session() as session:
            if any_key_exists(session):
                project = None
            else:
                project = ensure_project(session, DEFAULT_PROJECT).id
                session.commit()
        self._open = (time.monotonic(), project)
        return project

    def _lookup(self, token: str) -> Principal | None:
        digest = hash_key(token)
        with self._lock:
            cached = self._hits.get(digest)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        with self.make_session() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            found = (
                Principal(row.project_id, row.id)
                if row is not None and row.revoked_at is None
                else None
            )
        with self._lock:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[digest] = (time.monotonic(), found)
        return found

    def resolve(self, authorization: str | None) -> Principal:
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        open_project = self._open_project()
        if token is not None:
            principal = self._lookup(token)
            if principal is not None:
                return principal
            if open_project is None:
                raise unauthorized("The API key is not valid or was revoked.")
        if open_project is not None:
            # no keys exist: the embedded single-user mode; any or no token is accepted
            return Principal(open_project, None)
        if token is None:
            raise unauthorized(
                "Missing API key: send 'Authorization: Bearer <key>'. Create one with "
                "`tunery keys create --project NAME`."
            )
        raise unauthorized("The API key is not valid or was revoked.")


class RateLimiter:
    """A token bucket per API key, in this process's memory (docs/security.md).

    Each key may make `per_minute` requests in a burst and then `per_minute / 60` a second;
    with several API processes the limit applies in each. `per_minute` 0 turns it off, and
    open mode (no key exists: the loopback-only single-user service) has no key to limit.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens a second
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, principal: Principal) -> None:
        """Spend one token of the caller's bucket, or raise 429 with Retry-After."""
        if self.per_minute <= 0 or principal.key_id is None:
            return
        who = principal.key_id
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(who, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                if len(self._buckets) > 10_000 and who not in self._buckets:
                    # full buckets carry no state: forget them
                    full = [k for k, (t, _) in self._buckets.items() if t >= self.per_minute - 1]
                    for k in full:
                        del self._buckets[k]
                self._buckets[who] = (tokens - 1.0, now)
                return
            self._buckets[who] = (tokens, now)
        wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        raise APIError(
            429,
            f"Rate limit exceeded: this API key may make {self.per_minute} requests a minute. "
            f"Retry after {wait} seconds, slow down, or ask the operator to raise "
            "TUNERY_RATE_LIMIT_PER_MINUTE.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )

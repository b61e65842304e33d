"""Annotated dependencies shared by the routes.

create_app() (app/main.py) wires the process's shared objects onto `app.state`; these
functions are the only readers, each with its type, so a route declares what it uses
(`settings: SettingsDep`) and never reads the untyped `request.app.state` itself. Tests
swap an object by assigning the same attribute (`app.state.enqueue = sent.append`).

The getters are `async def` although they never wait: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per request that the status GET, the hot path,
is built to avoid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from app.auth import KeyResolver, Principal, RateLimiter
from app.deployments.service import Serving
from app.inference_client import InferenceClient
from app.reads import Reads
from app.settings import Settings
from app.storage import ArtifactStore

log = logging.getLogger(__name__)


async def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    make_session: sessionmaker[Session] = request.app.state.sessionmaker
    return make_session


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the route returns without error."""
    make_session: sessionmaker[Session] = request.app.state.sessionmaker
    session = make_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store_dep(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def get_reads(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


class Enqueue:
    """Sends a wake-up for a row the caller has committed. A broker that cannot be reached is
    logged, not raised: the row stays queued, and the reconciler sends it again
    (TUNERY_REQUEUE_AFTER_SECONDS), so the request that created it still succeeds."""

    def __init__(self, send: Callable[[str], None], kind: str) -> None:
        self.send = send
        self.kind = kind

    def __call__(self, row_id: str) -> None:
        try:
            self.send(row_id)
        except Exception:
            log.exception("could not enqueue %s %s; the reconciler will retry", self.kind, row_id)


async def get_enqueue_job(request: Request) -> Enqueue:
    return Enqueue(request.app.state.enqueue, "job")


async def get_enqueue_evaluation(request: Request) -> Enqueue:
    return Enqueue(request.app.state.enqueue_evaluation, "evaluation")


# async: a plain def dependency would cost every request a thread hop
async def get_inference(request: Request) -> InferenceClient:
    """The async client of the inference server (closed at shutdown)."""
    client: InferenceClient = request.app.state.inference
    return client


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


# scope="function": commit before the response is sent, so a client that reads right after a
# write (the openai SDK's create-then-retrieve) always sees it
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SessionmakerDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[ArtifactStore, Depends(get_store_dep)]
ReadsDep = Annotated[Reads, Depends(get_reads)]
EnqueueJobDep = Annotated[Enqueue, Depends(get_enqueue_job)]
EnqueueEvaluationDep = Annotated[Enqueue, Depends(get_enqueue_evaluation)]
InferenceDep = Annotated[InferenceClient, Depends(get_inference)]
ServingDep = Annotated[Serving, Depends(get_serving)]


async def require_principal(request: Request) -> Principal:
    """The caller's project, from its Bearer key (401 without a valid one once keys exist).

    Async on purpose: keys are cached in memory, so the common case costs no thread hop.
    """
    state = request.app.state
    keys: KeyResolver = state.keys
    principal = keys.resolve(request.headers.get("authorization"))
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        # made on first use, from the app's settings (one bucket table per API process)
        settings: Settings = state.settings
        limiter = state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    limiter.take(principal)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]

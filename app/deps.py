"""Annotated dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.auth import Principal, RateLimiter
from app.deployments.service import Serving
from app.inference_client import InferenceClient
from app.settings import Settings
from app.storage import ArtifactStore


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the route returns without error."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store_dep(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


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
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[ArtifactStore, Depends(get_store_dep)]
InferenceDep = Annotated[InferenceClient, Depends(get_inference)]
ServingDep = Annotated[Serving, Depends(get_serving)]


async def require_principal(request: Request) -> Principal:
    """The caller's project, from its Bearer key (401 without a valid one once keys exist).

    Async on purpose: keys are cached in memory, so the common case costs no thread hop.
    """
    state = request.app.state
    principal: Principal = state.keys.resolve(request.headers.get("authorization"))
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        # made on first use, from the app's settings (one bucket table per API process)
        limiter = state.rate_limiter = RateLimiter(state.settings.rate_limit_per_minute)
    limiter.take(principal)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]

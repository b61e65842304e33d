"""create_app(): routers, middleware, error handlers, background reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import db
from app.auth import KeyResolver
from app.broker import BrokerWatch, enqueue_evaluation, enqueue_job, make_celery
from app.dashboard import install_dashboard
from app.deployments import repository as deployments_repo
from app.deployments.limits import ConcurrencyLimits
from app.deployments.lookup import Lookup
from app.deployments.routes import router as deployments_router
from app.deployments.service import Serving
from app.deployments.usage import Usage, UsageCounter
from app.deps import Enqueue, require_principal
from app.edge import check_request_strings
from app.errors import document_errors, error_body, error_responses, install_error_handlers
from app.evaluations.routes import router as evaluations_router
from app.files.routes import router as files_router
from app.hub.routes import router as hub_router
from app.inference_client import InferenceClient
from app.jobs.reconciler import Reconciler
from app.jobs.routes import router as jobs_router
from app.models.routes import router as models_router
from app.observability import install_metrics
from app.openai_compat.routes import router as openai_router
from app.openapi import describe_api
from app.reads import make_reads
from app.settings import Settings, get_settings
from app.storage import ArtifactStore
from app.sweeps.driver import SweepDriver
from app.sweeps.routes import router as sweeps_router

log = logging.getLogger(__name__)

# an upload or checkpoint write still going after this long is abandoned (its process died)
PARTIAL_MAX_AGE_SECONDS = 6 * 3600


def create_app(settings: Settings | None = None, *, reconciler: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = db.make_engine(settings.database_url)
    store = ArtifactStore(settings.storage_url, settings.cache_dir)
    inference = InferenceClient(settings.inference_url, settings.inference_max_connections)

    celery = make_celery(settings)

    def enqueue(job_id: str) -> None:
        enqueue_job(celery, job_id)

    def enqueue_eval(evaluation_id: str) -> None:
        enqueue_evaluation(celery, evaluation_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = None
        if reconciler:
            loop = Reconciler(
                app.state.sessionmaker,
                enqueue,
                settings.reconcile_every_seconds,
                settings.requeue_after_seconds,
                broker=BrokerWatch(settings),
                enqueue_evaluation=enqueue_eval,
                max_workers_lost=settings.max_workers_lost,
            )
            loop.start()
            sweeps = SweepDriver(
                app.state.sessionmaker,
                settings,
                Enqueue(lambda job_id: app.state.enqueue(job_id), "job"),
            )
            sweeps.start()
        await app.state.reads.open()
        counters = (app.state.serving.usage, app.state.serving.project_usage)
        flushers = [
            asyncio.ensure_future(counter.run(settings.usage_flush_seconds)) for counter in counters
        ]
        # uploads cut off by a crash leave <key>.partial-* files nobody lists; drop old ones
        threading.Thread(
            target=store.remove_partials,
            args=(PARTIAL_MAX_AGE_SECONDS,),
            name="tunery-partials",
            daemon=True,
        ).start()
        yield
        for flusher in flushers:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        for counter in counters:
            await counter.flush()  # what was counted since the last flush
        await app.state.reads.close()
        if loop is not None:
            loop.stop()
            sweeps.stop()
        await inference.aclose()
        engine.dispose()

    app = FastAPI(
        title="Tunery",
        version="0.1.0",
        description="Self-hosted fine-tuning with an OpenAI-shaped API.",
        lifespan=lifespan,
        # every string of every request keeps one rule before a route sees it (app/edge.py)
        dependencies=[Depends(check_request_strings)],
    )
    app.state.settings = settings
    app.state.store = store
    app.state.inference = inference
    app.state.enqueue = enqueue
    app.state.enqueue_evaluation = enqueue_eval
    app.state.celery = celery
    app.state.sessionmaker = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    app.state.reads = make_reads(settings.database_url, engine)
    assert settings.models_dir is not None
    app.state.serving = Serving(
        make_session=app.state.sessionmaker,
        models_dir=settings.models_dir,
        lookup=Lookup(
            app.state.reads,
            app.state.sessionmaker,
            settings.models_dir,
            settings.serving_cache_seconds,
        ),
        limits=ConcurrencyLimits(settings.serving_max_concurrency),
        usage=UsageCounter(partial(_write_usage, app.state.sessionmaker)),
        project_usage=UsageCounter(partial(_write_project_usage, app.state.sessionmaker)),
    )
    app.state.keys = KeyResolver(app.state.sessionmaker)

    install_error_handlers(app)

    app.add_middleware(RefuseOversize, limit=settings.max_upload_bytes)

    # every /v1 route needs a valid key once any key exists (app/auth.py); `responses`
    # documents the error statuses each router's routes answer besides COMMON_ERRORS
    authenticated = [Depends(require_principal)]
    for router, statuses in (
        (files_router, (409,)),
        (jobs_router, (409,)),
        # before models_router: its GET /v1/models/{model_id:path} would take /pulls/{id}
        (hub_router, (403, 409, 502, 507)),
        (sweeps_router, (409,)),
        (models_router, (403, 409, 503)),
        (deployments_router, (409, 503)),
    ):
        app.include_router(router, dependencies=authenticated, responses=error_responses(*statuses))
    app.include_router(
        openai_router, dependencies=authenticated, responses=error_responses(409, 503)
    )
    install_metrics(app)  # request timing and GET /metrics (app/observability.py)
    install_dashboard(app)  # the dashboard at / (app/dashboard/)
    app.include_router(
        evaluations_router, dependencies=authenticated, responses=error_responses(409)
    )
    document_errors(app)
    describe_api(app)  # the constraints the code checks, and links between operations

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
        healthy = anyio.from_thread.run(inference.healthy)
        checks["inference"] = "ok" if healthy else "unreachable"
        ready = checks["database"] == "ok" and checks["broker"] == "ok"
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    return app


def _write_usage(make_session: sessionmaker[Session], deltas: dict[str, Usage]) -> None:
    with make_session() as session:
        deployments_repo.add_usage(session, deltas)
        session.commit()


def _write_project_usage(make_session: sessionmaker[Session], deltas: dict[str, Usage]) -> None:
    with make_session() as session:
        deployments_repo.add_project_usage(session, deltas)
        session.commit()


# what a multipart body may add to the file it carries (boundaries, headers, form fields)
MULTIPART_ENVELOPE = 1024 * 1024


class RefuseOversize:
    """Refuses a body over the upload limit: before reading a byte of it when it announces
    its size (Content-Length), and as soon as it streams past the limit when it does not
    (chunked), so that neither memory nor the spool disk takes an unbounded body.

    Plain ASGI rather than @app.middleware: it runs on every request, and the decorator form
    costs a task and a stream wrapper per request.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _message(self, size: str) -> str:
        return (
            f"Request body of {size} bytes is over the limit of {self.limit} bytes; split the "
            "file or raise TUNERY_MAX_UPLOAD_BYTES."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # room for the multipart envelope around the file
        most = self.limit + MULTIPART_ENVELOPE
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            # the server frames the body by Content-Length: it cannot grow past what it says
            if length.isdigit() and int(length) > most:
                response = JSONResponse(
                    error_body(413, self._message(str(int(length))), "file", "file_too_large"),
                    status_code=413,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > most:
                    # an HTTPException passes FastAPI's body parsing untouched and is answered
                    # by the error handlers (app/errors.py), before the rest is read
                    raise StarletteHTTPException(413, self._message(f"more than {most}"))
            return message

        await self.app(scope, counted, send)

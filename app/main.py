"""create_app(): routers, middleware, error handlers, background reconciler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from app import db
from app.deployments.routes import router as deployments_router
from app.errors import error_body, install_error_handlers
from app.files.routes import router as files_router
from app.inference_client import InferenceClient
from app.jobs.reconciler import Reconciler
from app.jobs.routes import router as jobs_router
from app.models.routes import router as models_router
from app.reads import make_reads
from app.settings import Settings, get_settings
from app.storage import ArtifactStore

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, reconciler: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = db.make_engine(settings.database_url)
    store = ArtifactStore(settings.storage_url, settings.cache_dir)
    inference = InferenceClient(settings.inference_url)

    from worker.celery_app import enqueue_job, make_celery

    celery = make_celery(settings)

    def enqueue(job_id: str) -> None:
        enqueue_job(celery, job_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = None
        if reconciler:
            loop = Reconciler(
                app.state.sessionmaker,
                enqueue,
                settings.reconcile_every_seconds,
                settings.requeue_after_seconds,
            )
            loop.start()
        await app.state.reads.open()
        yield
        await app.state.reads.close()
        if loop is not None:
            loop.stop()
        inference.close()
        engine.dispose()

    app = FastAPI(
        title="Tunery",
        version="0.1.0",
        description="Self-hosted fine-tuning with an OpenAI-shaped API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.inference = inference
    app.state.enqueue = enqueue
    app.state.celery = celery
    app.state.sessionmaker = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    app.state.reads = make_reads(settings.database_url, engine)

    install_error_handlers(app)

    app.add_middleware(RefuseOversize, limit=settings.max_upload_bytes)

    for router in (files_router, jobs_router, models_router, deployments_router):
        app.include_router(router)

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
        checks["inference"] = "ok" if inference.healthy() else "unreachable"
        ready = checks["database"] == "ok" and checks["broker"] == "ok"
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    return app


class RefuseOversize:
    """Refuses a body over the upload limit before reading a byte of it.

    Plain ASGI rather than @app.middleware: it runs on every request, and the decorator form
    costs a task and a stream wrapper per request. The artifact store enforces the limit
    again while streaming, for clients that send no Content-Length.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            # room for the multipart envelope around the file
            if length.isdigit() and int(length) > self.limit + 1024 * 1024:
                response = JSONResponse(
                    error_body(
                        413,
                        f"Request body of {int(length)} bytes is over the limit of "
                        f"{self.limit} bytes; split the file or raise TUNERY_MAX_UPLOAD_BYTES.",
                        "file",
                        "file_too_large",
                    ),
                    status_code=413,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

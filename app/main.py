"""create_app(): routers, middleware, error handlers, background reconciler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from app import db
from app.deployments.routes import router as deployments_router
from app.errors import error_body, install_error_handlers
from app.files.routes import router as files_router
from app.inference_client import InferenceClient
from app.jobs.reconciler import Reconciler
from app.jobs.routes import router as jobs_router
from app.models.routes import router as models_router
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
        yield
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

    install_error_handlers(app)

    @app.middleware("http")
    async def refuse_oversize(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # refuse before reading a byte of the body; the store enforces it again while
        # streaming, for clients that send no Content-Length
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes + 1024 * 1024  # room for the multipart envelope
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse(
                error_body(
                    413,
                    f"Request body of {length} bytes is over the limit of "
                    f"{settings.max_upload_bytes} bytes; split the file or raise "
                    "TUNERY_MAX_UPLOAD_BYTES.",
                    "file",
                    "file_too_large",
                ),
                status_code=413,
                headers={"Connection": "close"},
            )
        return await call_next(request)

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

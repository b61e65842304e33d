"""The inference server: HTTP in front of InferenceService (docs/internals.md).

Routes only parse, hand the blocking work to a threadpool so the event loop keeps
answering (health checks included) while a model loads or runs, and map errors to
`{"error": {"message", "type", "param", "code"}}`. It keeps its models in process memory,
so it runs as a single uvicorn worker.
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app.settings import Settings, get_settings
from app.storage import ArtifactStore, get_store
from worker.inference.loading import ModelLoadError, pick_device
from worker.inference.predictors import PredictionInputError
from worker.inference.schemas import (
    INPUT_TAGS,
    ExportRequest,
    ExportResponse,
    LoadRequest,
    LoadResponse,
    ModelsResponse,
    ModelStats,
    PredictRequest,
    PredictResponse,
    UnloadRequest,
    UnloadResponse,
)
from worker.inference.service import InferenceService

DEFAULT_MAX_MODELS = 4


def create_app(
    settings: Settings | None = None,
    store: ArtifactStore | None = None,
    service: InferenceService | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    if service is None:
        service = InferenceService(
            store or get_store(settings),
            # optional settings: the defaults hold until Settings grows these fields
            max_models=getattr(settings, "inference_max_models", DEFAULT_MAX_MODELS),
            memory_budget_bytes=getattr(settings, "inference_memory_budget_bytes", None),
        )
    app = FastAPI(title="tunery inference", docs_url=None, redoc_url=None)
    app.state.service = service
    _add_routes(app, service)
    _add_error_handlers(app)
    return app


def _add_routes(app: FastAPI, service: InferenceService) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "device": pick_device()[0].type, "models": len(service.cache)}

    @app.post("/internal/load")
    async def load(body: LoadRequest) -> LoadResponse:
        loaded = await run_in_threadpool(service.load, body.model.to_spec(), body.pin)
        return LoadResponse(
            key=loaded.spec.key,
            load_seconds=loaded.load_seconds,
            memory_bytes=loaded.memory_bytes,
        )

    @app.post("/internal/unload")
    async def unload(body: UnloadRequest) -> UnloadResponse:
        unloaded = await run_in_threadpool(service.unload, body.key)
        return UnloadResponse(key=body.key, unloaded=unloaded)

    @app.post("/internal/predict")
    async def predict(body: PredictRequest) -> PredictResponse:
        predictions = await run_in_threadpool(
            service.predict,
            body.model.to_spec(),
            body.plain_inputs(),
            body.parameters.model_dump(exclude_none=True),
        )
        return PredictResponse(predictions=[dict(p) for p in predictions])

    @app.post("/internal/export")
    async def export(body: ExportRequest) -> ExportResponse:
        artifact = await run_in_threadpool(service.export_merged, body.model.to_spec())
        return ExportResponse(artifact=artifact)

    @app.get("/internal/models")
    async def models() -> ModelsResponse:
        cache = service.cache
        return ModelsResponse(
            models=[ModelStats(**entry) for entry in cache.stats()],
            max_models=cache.max_models,
            memory_budget_bytes=cache.memory_budget_bytes,
            memory_bytes=cache.total_memory_bytes(),
        )


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse(error_body(message, **fields), status_code=status)


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body" and p not in INPUT_TAGS]
    return ".".join(parts) or None


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        param = _param_of(tuple(first.get("loc", ())))
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = f"{param}: {reason}" if param else reason
        return _error(422, message, param=param, code=str(first.get("type", "invalid_value")))

    @app.exception_handler(ModelLoadError)
    async def load_failed(request: Request, exc: ModelLoadError) -> JSONResponse:
        return _error(422, str(exc), param="model", code="model_load_failed")

    @app.exception_handler(PredictionInputError)
    async def bad_input(request: Request, exc: PredictionInputError) -> JSONResponse:
        return _error(422, str(exc), param=exc.param, code=exc.code)

    @app.exception_handler(torch.OutOfMemoryError)
    async def out_of_memory(request: Request, exc: torch.OutOfMemoryError) -> JSONResponse:
        return _error(
            503,
            "the accelerator ran out of memory; retry later or send fewer or shorter inputs",
            type="server_error",
            code="out_of_memory",
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), type=kind)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # starlette re-raises after this response, so the server logs the traceback
        return _error(500, "internal error in the inference server", type="server_error")


def run(host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve until interrupted; `tunery inference` calls this."""
    import uvicorn

    uvicorn.run(create_app(), host=host, port=port, workers=1)

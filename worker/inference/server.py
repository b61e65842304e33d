"""The inference server: HTTP in front of InferenceService (docs/internals.md).

Routes only parse, hand the blocking work to a threadpool so the event loop keeps
answering (health checks included) while a model loads or runs, and map errors to
`{"error": {"message", "type", "param", "code"}}`. It keeps its models in process memory,
so it runs as a single uvicorn worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app.heap import freeze_startup_heap
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, get_store
from worker.inference.errors import Overloaded
from worker.inference.loading import ModelLoadError, pick_device
from worker.inference.predictors import PredictionInputError
from worker.inference.schemas import (
    INPUT_TAGS,
    ExportRequest,
    ExportResponse,
    LoadRequest,
    LoadResponse,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    UnloadRequest,
    UnloadResponse,
)
from worker.inference.service import InferenceService

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(
    settings: Settings | None = None,
    store: ArtifactStore | None = None,
    service: InferenceService | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    if service is None:
        service = InferenceService(
            store or get_store(settings),
            max_models=settings.inference_max_models,
            memory_budget_bytes=settings.inference_memory_budget_bytes,
            max_batch_size=settings.inference_max_batch_size,
            max_wait_ms=settings.inference_max_wait_ms,
            max_running=settings.inference_max_running,
            max_queue=settings.inference_max_queue,
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
        spec = body.model.to_spec()
        await run_in_threadpool(service.load, spec, body.pin)
        report = next((r for r in service.reports() if r.key == spec.key), None)
        if report is None:  # evicted again at once: only a budget smaller than the model
            raise ModelLoadError(
                f"{spec.key!r} loaded but does not fit the memory budget next to the pinned "
                "models; raise TUNERY_INFERENCE_MEMORY_BUDGET_BYTES or unpin some"
            )
        return LoadResponse(
            key=spec.key,
            load_seconds=report.load_seconds,
            memory_bytes=report.memory_bytes,
            base=report.base,
            base_memory_bytes=report.base_memory_bytes,
        )

    @app.post("/internal/unload")
    async def unload(body: UnloadRequest) -> UnloadResponse:
        unloaded = await run_in_threadpool(service.unload, body.key)
        return UnloadResponse(key=body.key, unloaded=unloaded)

    @app.post("/internal/predict", response_model=None)
    async def predict(body: PredictRequest) -> PredictResponse | StreamingResponse:
        spec = body.model.to_spec()
        parameters = body.parameters.model_dump(exclude_none=True, by_alias=True)
        if body.stream:
            if len(body.inputs) != 1:
                raise PredictionInputError(
                    f"stream takes exactly 1 input, got {len(body.inputs)}; send the others "
                    "in requests of their own",
                    param="inputs",
                )
            return await _stream(service, spec, body.plain_inputs()[0], parameters, body.pin)
        predictions = await service.predict_async(spec, body.plain_inputs(), parameters, body.pin)
        return PredictResponse(predictions=[dict(p) for p in predictions])

    @app.post("/internal/export")
    async def export(body: ExportRequest) -> ExportResponse:
        artifact = await run_in_threadpool(service.export_merged, body.model.to_spec())
        return ExportResponse(artifact=artifact)

    @app.get("/internal/models")
    async def models() -> ModelsResponse:
        cache, limits = service.cache, service.limits
        return ModelsResponse(
            models=service.reports(),
            bases=service.base_reports(),
            max_models=cache.max_models,
            memory_budget_bytes=cache.memory_budget_bytes,
            memory_bytes=cache.total_memory_bytes(),
            max_batch_size=limits.max_batch_size,
            max_wait_ms=limits.max_wait_ms,
            max_running=limits.max_running,
            max_queue=limits.max_queue,
        )


async def _stream(
    service: InferenceService,
    spec: Any,
    item: Any,
    parameters: dict[str, Any],
    pin: bool | None,
) -> StreamingResponse:
    """Server-sent events: `data: {"text": delta}` lines, then the closing
    `data: {"finish_reason", "prompt_tokens", "completion_tokens"}` (or `data: {"error"}`),
    then `data: [DONE]`. What fails before the first token is an ordinary error response."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Any] = asyncio.Queue()

    def emit(item: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, item)

    cancel = await service.open_stream_async(spec, item, parameters, emit, pin)

    async def lines() -> AsyncIterator[str]:
        try:
            while True:
                # what piled up while the loop was busy goes out as one write: under many
                # streams a write per token costs the loop more than the tokens themselves
                pending = [await events.get()]
                while not events.empty() and pending[-1] is not None:
                    pending.append(events.get_nowait())
                yield "".join(_sse(event) for event in pending)
                if pending[-1] is None:
                    return
        finally:
            # the client went away (or the stream ended): stop generating for nobody
            cancel.set()

    return StreamingResponse(lines(), media_type="text/event-stream", headers=SSE_HEADERS)


def _sse(event: Any) -> str:
    if event is None:
        return "data: [DONE]\n\n"
    if isinstance(event, str):
        payload: dict[str, Any] = {"text": event}
    elif isinstance(event, BaseException):
        payload = _stream_error(event)
    else:
        payload = event
    return f"data: {json.dumps(payload)}\n\n"


def _stream_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, Overloaded):
        return error_body(str(exc), type="server_error", code="overloaded")
    if isinstance(exc, ModelLoadError):
        return error_body(str(exc), param="model", code="model_load_failed")
    if isinstance(exc, PredictionInputError):
        return error_body(str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, torch.OutOfMemoryError):
        return error_body(
            "the accelerator ran out of memory; retry later or send a shorter input",
            type="server_error",
            code="out_of_memory",
        )
    log.error("stream failed", exc_info=exc)
    return error_body("internal error in the inference server", type="server_error")


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

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        # answered at once, before anything ran: the control plane maps it for its users
        response = _error(503, str(exc), type="server_error", code="overloaded")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

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

    settings = get_settings()
    # torch's default (a thread per core) unless told: on a CPU host whose other work keeps
    # every core busy, fewer threads avoid OpenMP spinning at each barrier (docs/serving.md)
    if settings.inference_threads is not None:
        torch.set_num_threads(settings.inference_threads)
    app = create_app(settings)
    freeze_startup_heap()  # before any model loads: models must stay collectable (app/heap.py)
    uvicorn.run(app, host=host, port=port, workers=1)

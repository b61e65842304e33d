from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.deps import PrincipalDep, SessionDep, SettingsDep
from app.errors import APIError, error_body, stream_response
from app.openai_compat import service
from app.openai_compat.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)


@router.post("/chat/completions", response_model=None, responses=stream_response())
def chat_completions(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    body: ChatCompletionRequest,
) -> dict[str, Any] | StreamingResponse:
    assert settings.models_dir is not None
    generation = service.chat_generation(session, settings.models_dir, body, principal.project_id)
    client = request.app.state.inference
    if body.stream:
        events = service.start_stream(client, generation)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _event_stream(service.chat_chunks(generation, events, include_usage))
    return service.chat_completion(generation, service.predict(client, generation))


@router.post("/completions", response_model=None, responses=stream_response())
def completions(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    body: CompletionRequest,
) -> dict[str, Any] | StreamingResponse:
    assert settings.models_dir is not None
    generation = service.completion_generation(
        session, settings.models_dir, body, principal.project_id
    )
    client = request.app.state.inference
    if body.stream:
        events = service.start_stream(client, generation)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _event_stream(service.completion_chunks(generation, events, include_usage))
    return service.text_completion(generation, service.predict(client, generation))


def _event_stream(chunks: Iterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(
        _sse(chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Server-sent events as OpenAI sends them: `data: {json}`, then `data: [DONE]`.

    The status is already 200 when a failure happens mid-stream, so it is sent as an
    `{"error": {...}}` event, which the openai SDK raises as an APIError.
    """
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
    except APIError as exc:
        yield f"data: {json.dumps(error_body(exc.status, exc.message, exc.param, exc.code))}\n\n"
        return
    except Exception as exc:
        log.exception("generation stream failed")
        body = error_body(
            500,
            f"Internal server error while streaming ({type(exc).__name__}); this is a bug in "
            "Tunery, the server log has the details.",
            None,
            "internal_error",
        )
        yield f"data: {json.dumps(body)}\n\n"
        return
    yield "data: [DONE]\n\n"

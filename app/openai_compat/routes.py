from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deployments.service import Serving
from app.deployments.sse import EventStream
from app.deployments.usage import Usage, of_predictions
from app.deps import InferenceDep, PrincipalDep, ServingDep
from app.errors import error_body, stream_response
from app.failures import APIError
from app.inference_client import PredictStream
from app.openai_compat import service
from app.openai_compat.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger(__name__)


@router.post("/chat/completions", response_model=None, responses=stream_response())
async def chat_completions(
    principal: PrincipalDep,
    serving: ServingDep,
    inference: InferenceDep,
    body: ChatCompletionRequest,
) -> JSONResponse | EventStream:
    generation = await service.chat_generation(serving.lookup, body, principal.project_id)
    if body.stream:
        events, slot = await service.start_stream(inference, serving.limits, generation)
        events.on_finish(partial(_count, serving, principal.project_id))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = service.chat_chunks(generation, events, include_usage)
        return EventStream(_sse(chunks, events, slot.release), on_close=slot.release)
    predictions = await service.predict(inference, serving.limits, generation)
    _count_choices(serving, principal.project_id, predictions)
    # already plain JSON types: skipping FastAPI's encoder saves ~0.2 ms a request
    return JSONResponse(service.chat_completion(generation, predictions))


@router.post("/completions", response_model=None, responses=stream_response())
async def completions(
    principal: PrincipalDep,
    serving: ServingDep,
    inference: InferenceDep,
    body: CompletionRequest,
) -> JSONResponse | EventStream:
    generation = await service.completion_generation(serving.lookup, body, principal.project_id)
    if body.stream:
        events, slot = await service.start_stream(inference, serving.limits, generation)
        events.on_finish(partial(_count, serving, principal.project_id))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = service.completion_chunks(generation, events, include_usage)
        return EventStream(_sse(chunks, events, slot.release), on_close=slot.release)
    predictions = await service.predict(inference, serving.limits, generation)
    _count_choices(serving, principal.project_id, predictions)
    return JSONResponse(service.text_completion(generation, predictions))


def _count(serving: Serving, project_id: str, final: dict[str, Any]) -> None:
    """A finished stream: its final event carries the request's tokens, all choices'."""
    serving.count(project_id, of_predictions([final]))


def _count_choices(serving: Serving, project_id: str, predictions: list[dict[str, Any]]) -> None:
    """One request's n choices: the prompt once, every choice's completion tokens."""
    tokens = service.usage(predictions)
    serving.count(project_id, Usage(1, tokens["prompt_tokens"], tokens["completion_tokens"]))


async def _sse(
    chunks: AsyncIterator[dict[str, Any]], events: PredictStream, done: Callable[[], None]
) -> AsyncGenerator[str, None]:
    """Server-sent events as OpenAI sends them: `data: {json}`, then `data: [DONE]`.

    The status is already 200 when a failure happens mid-stream, so it is sent as an
    `{"error": {...}}` event, which the openai SDK raises as an APIError. `done()` runs once
    the upstream stream is over, before [DONE] goes out.
    """
    try:
        async for chunk in chunks:
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
    finally:
        done()
        # the upstream response, even when the chunks stopped early or the client hung up
        with anyio.CancelScope(shield=True):
            await events.aclose()
    yield "data: [DONE]\n\n"

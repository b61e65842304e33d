"""Deployments keep a model warm on the inference server; predict goes through them.

Any model can also be called without a deployment (`predict_model`): the inference server
loads it just in time and may evict it later, where a deployment keeps it pinned.

No session is open while a request waits for the inference server: the serving path reads
through `Lookup` (the async read path and a short cache), writes a load's outcome in a
session of its own after the server answered, and counts usage in memory (usage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker

import task_plugins
from app.deployments import repository
from app.deployments.limits import ConcurrencyLimits, Slot
from app.deployments.lookup import Lookup
from app.deployments.usage import Usage, UsageCounter, of_predictions
from app.errors import error_body
from app.failures import APIError, not_found
from app.inference_client import UNAVAILABLE, InferenceClient, PredictStream
from app.models.service import serving_spec
from app.tables import DeploymentRow

log = logging.getLogger(__name__)


@dataclass
class Serving:
    """What the serving routes share in one API process (app.state.serving)."""

    make_session: sessionmaker[Session]
    models_dir: Path
    lookup: Lookup
    limits: ConcurrencyLimits
    # per deployment id, and per project id (deployments and direct model calls alike)
    usage: UsageCounter
    project_usage: UsageCounter

    def count(self, project_id: str, usage: Usage, dep_id: str | None = None) -> None:
        """One served request: its project's counts, and its deployment's when it went
        through one."""
        if dep_id is not None:
            self.usage.record(dep_id, usage)
        self.project_usage.record(project_id, usage)


def create(session: Session, models_dir: Path, model_id: str, project_id: str) -> DeploymentRow:
    # 404/409 now rather than a failed deployment; another project's model reads as missing
    serving_spec(session, models_dir, model_id, project_id=project_id)
    return repository.add(session, model_id, project_id)


async def load_in_background(
    serving: Serving, client: InferenceClient, dep_id: str, model_id: str, project_id: str
) -> None:
    """Runs after the response: ask the inference server to load, record the outcome."""
    try:
        await _load(serving, client, dep_id, model_id, project_id)
    except APIError:
        pass  # recorded on the row
    except Exception as exc:
        log.exception("deployment %s failed to load", dep_id)
        await _record(serving, dep_id, _failed("load_failed", str(exc)))


async def _load(
    serving: Serving, client: InferenceClient, dep_id: str, model_id: str, project_id: str
) -> None:
    """Load (pinned) and record the outcome on the row, failures included (then re-raised)."""
    try:
        spec = await serving.lookup.spec(model_id, project_id)
        result = await client.load(spec, pin=True)
    except APIError as exc:
        await _record(serving, dep_id, _failed(exc.code or "load_failed", exc.message))
        raise
    base_bytes = result.get("base_memory_bytes")
    loaded = {
        "status": "ready",
        "error": None,
        "load_seconds": float(result.get("load_seconds") or 0.0),
        "memory_bytes": int(result.get("memory_bytes") or 0),
        "base_memory_bytes": int(base_bytes) if base_bytes is not None else None,
    }
    if not await _record(serving, dep_id, loaded):
        # deleted while it loaded: do not leave it pinned for nobody
        await _unload_unless_deployed(serving, client, model_id)


def _failed(code: str, message: str) -> dict[str, Any]:
    return {"status": "failed", "error": {"code": code, "message": message}}


async def _record(serving: Serving, dep_id: str, values: dict[str, Any]) -> bool:
    def write() -> bool:
        with serving.make_session() as session:
            written = repository.record_outcome(session, dep_id, values)
            session.commit()
            return written

    written = await asyncio.to_thread(write)
    serving.lookup.forget_deployment(dep_id)
    return written


def get(session: Session, dep_id: str, project_id: str) -> DeploymentRow:
    row = repository.get(session, dep_id, project_id)
    if row is None:
        raise not_found("deployment", dep_id, param="deployment_id")
    return row


async def retrieve(serving: Serving, dep_id: str, project_id: str) -> tuple[Any, Usage]:
    """The row and this process's usage not yet in it (usage.py: exact)."""
    row, pending = await serving.usage.exact(
        lambda: serving.lookup.reads.deployment(dep_id, project_id)
    )
    if row is None:
        raise not_found("deployment", dep_id, param="deployment_id")
    return row, pending.get(dep_id, Usage())


async def project_usage(serving: Serving, project_id: str) -> Usage:
    """The project's usage: the database's counts plus this process's unflushed ones."""
    row, pending = await serving.project_usage.exact(
        lambda: serving.lookup.reads.project(project_id)
    )
    total = pending.get(project_id, Usage())
    if row is not None:
        total.add(Usage(row.requests_served, row.prompt_tokens, row.completion_tokens))
    return total


async def list_all(serving: Serving, project_id: str) -> list[tuple[Any, Usage]]:
    rows, pending = await serving.usage.exact(lambda: serving.lookup.reads.deployments(project_id))
    return [(row, pending.get(row.id, Usage())) for row in rows]


async def _servable(
    serving: Serving, client: InferenceClient, dep_id: str, project_id: str
) -> tuple[Any, dict[str, Any]]:
    """The deployment and its model spec, once it can serve."""
    row = await serving.lookup.deployment(dep_id, project_id)
    if row.status == "loading":
        raise APIError(
            409,
            f"Deployment {dep_id} is still loading; retry in a few seconds.",
            code="deployment_loading",
            headers={"Retry-After": "2"},
        )
    if row.status == "failed":
        if (row.error or {}).get("code") != UNAVAILABLE:
            message = (row.error or {}).get("message", "unknown error")
            raise APIError(
                409,
                f"Deployment {dep_id} failed to load: {message}. Delete it and deploy again.",
                code="deployment_failed",
            )
        # it failed only because the inference server was down: it may be back now
        await _load(serving, client, dep_id, row.model, project_id)
    return row, await serving.lookup.spec(row.model, project_id)


async def predict(
    serving: Serving,
    client: InferenceClient,
    dep_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> dict[str, Any]:
    row, spec = await _servable(serving, client, dep_id, project_id)
    with serving.limits.acquire(spec["key"]):
        # pin: a server that restarted since the deployment was made loads it again, pinned
        result = await client.predict(spec, inputs, parameters, pin=True)
    serving.count(project_id, of_predictions(result.get("predictions") or []), dep_id)
    return {"object": "prediction", "model": row.model, "deployment": dep_id, **result}


async def open_stream(
    serving: Serving,
    client: InferenceClient,
    dep_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> tuple[AsyncGenerator[str, None], Slot]:
    """The stream's server-sent events and the slot it holds until it ends; the request
    counts once the server accepted it, its tokens once it finished."""
    _, spec = await _servable(serving, client, dep_id, project_id)
    check_streamable(spec, inputs)
    slot = serving.limits.acquire(spec["key"])
    try:
        stream = await client.stream_predict(spec, inputs[0], parameters, pin=True)
    except BaseException:
        slot.release()
        raise

    def done(final: dict[str, Any] | None) -> None:
        slot.release()
        serving.count(project_id, of_predictions([final or {}]), dep_id)

    return sse_lines(stream, done), slot


async def predict_model(
    serving: Serving,
    client: InferenceClient,
    model_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> dict[str, Any]:
    spec = await serving.lookup.spec(model_id, project_id)
    with serving.limits.acquire(spec["key"]):
        result = await client.predict(spec, inputs, parameters)
    serving.count(project_id, of_predictions(result.get("predictions") or []))
    return {"object": "prediction", "model": model_id, "deployment": None, **result}


async def open_model_stream(
    serving: Serving,
    client: InferenceClient,
    model_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> tuple[AsyncGenerator[str, None], Slot]:
    spec = await serving.lookup.spec(model_id, project_id)
    check_streamable(spec, inputs)
    slot = serving.limits.acquire(spec["key"])
    try:
        stream = await client.stream_predict(spec, inputs[0], parameters)
    except BaseException:
        slot.release()
        raise

    def done(final: dict[str, Any] | None) -> None:
        slot.release()
        serving.count(project_id, of_predictions([final or {}]))

    return sse_lines(stream, done), slot


def check_streamable(spec: dict[str, Any], inputs: list[Any]) -> None:
    if not task_plugins.get(spec["task"]).predictor.streams:
        raise APIError(
            400,
            f"stream applies to causal-lm models; {spec['key']} does {spec['task']}. "
            "Leave stream out to get its predictions.",
            param="stream",
            code="unsupported_parameter",
        )
    if len(inputs) != 1:
        raise APIError(
            400,
            f"stream takes exactly 1 input, got {len(inputs)}; send the others in requests "
            "of their own.",
            param="inputs",
            code="invalid_input",
        )


async def sse_lines(
    stream: PredictStream, done: Callable[[dict[str, Any] | None], None]
) -> AsyncGenerator[str, None]:
    """The inference server's events as server-sent events (docs/internals.md): text
    deltas, the finish event, then [DONE]; a failure mid-stream becomes an error event.
    `done(final event or None)` runs once the upstream stream is over, before [DONE] goes
    out: a client that sends its next request on [DONE] finds the slot free."""
    final: dict[str, Any] | None = None
    try:
        async for event in stream:
            if "finish_reason" in event:
                final = event
            yield f"data: {json.dumps(event)}\n\n"
    except APIError as exc:
        body = error_body(exc.status, exc.message, exc.param, exc.code)
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        done(final)
        # shielded: a client that hung up cancels this generator, and the upstream must
        # still be closed, which tells the inference server to stop generating
        with anyio.CancelScope(shield=True):
            await stream.aclose()
    yield "data: [DONE]\n\n"


def mark_deleted(session: Session, dep_id: str, project_id: str) -> tuple[str, bool]:
    """Delete the deployment; its model, and whether another deployment still serves it."""
    row = get(session, dep_id, project_id)
    row.deleted = True
    session.flush()
    return row.model, repository.others_serve(session, row.model)


async def _unload_unless_deployed(serving: Serving, client: InferenceClient, model: str) -> None:
    def deployed() -> bool:
        with serving.make_session() as session:
            return repository.others_serve(session, model)

    if not await asyncio.to_thread(deployed):
        await unload(client, model)


async def unload(client: InferenceClient, model: str) -> None:
    # not loaded, or the server is down: nothing to free either way
    with contextlib.suppress(APIError):
        await client.unload(model)

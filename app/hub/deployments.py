"""A deployment of a Hub model that is not in TUNERY_MODELS_DIR, with TUNERY_HUB_AUTO_PULL on:
the API pulls it (app/hub/service.py), and the deployment, `loading` meanwhile, loads once
the pull has succeeded or fails with the pull's error. The pull's progress is at
GET /v1/models/pulls/{id}."""

from __future__ import annotations

import anyio

from app.deployments import repository
from app.deployments.service import Serving, load_in_background
from app.hub import service
from app.inference_client import InferenceClient


async def load_after_pull(
    serving: Serving,
    client: InferenceClient,
    pull_id: str,
    dep_id: str,
    model_id: str,
    project_id: str,
) -> None:
    state = await anyio.to_thread.run_sync(service.wait_for, serving.make_session, pull_id)
    if state["status"] == "succeeded":
        await load_in_background(serving, client, dep_id, model_id, project_id)
        return
    error = state["error"] or {"code": "pull_failed", "message": f"pulling {model_id} failed"}

    def record() -> None:
        with serving.make_session() as session:
            repository.record_outcome(session, dep_id, {"status": "failed", "error": error})
            session.commit()

    await anyio.to_thread.run_sync(record)
    serving.lookup.forget_deployment(dep_id)

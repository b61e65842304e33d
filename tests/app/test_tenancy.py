"""Project scoping: another project's id answers 404 on every route that takes one.

The walk reads the app's route table, so a route added later is covered without touching
this file: a path parameter this test has no object for fails it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.routing import APIRoute
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import BaseRoute

from app.auth import create_key
from app.ids import new_id
from app.migrate import alembic_config, upgrade
from app.storage import ArtifactStore
from app.tables import (
    DeploymentRow,
    EvaluationRow,
    FineTunedModelRow,
    JobCheckpointRow,
    ProjectRow,
    SweepRow,
)
from tests.app.conftest import Api
from tests.support.media import digit_images, folder_zip

CHAT = "\n".join(
    json.dumps({"prompt": f"question {i}", "completion": f" answer {i}"}) for i in range(12)
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, into included routers too (FastAPI keeps those as a branch)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


@dataclass
class Tenants:
    api: Api
    key_a: str
    key_b: str
    ids: dict[str, str]  # path parameter name -> project A's object
    media_file_id: str  # project A's image archive, for the routes of an archive's samples


def make_session(api: Api) -> sessionmaker[Session]:
    maker: sessionmaker[Session] = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    return maker


def upload(api: Api, key: str, text_: str = CHAT) -> dict[str, Any]:
    response = api.client.post(
        "/v1/files",
        files={"file": ("train.jsonl", text_.encode())},
        data={"purpose": "fine-tune"},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def tenants(api: Api, tmp_path: Path) -> Tenants:
    api.client.app.state.keys.cache_seconds = 0  # type: ignore[attr-defined]
    with make_session(api)() as session:
        _, key_a = create_key(session, "alpha")
        _, key_b = create_key(session, "beta")
        project_a = session.query(ProjectRow).filter_by(name="alpha").one().id
        session.commit()

    file_id = upload(api, key_a)["id"]
    # the samples routes read an image archive: project A's own is a small zip of digits
    pictures = folder_zip(tmp_path / "digits.zip", digit_images(5, (1, 2)))
    media = api.client.post(
        "/v1/files",
        files={"file": ("digits.zip", pictures.read_bytes())},
        data={"purpose": "fine-tune"},
        headers=bearer(key_a),
    )
    assert media.status_code == 200, media.text
    media_file_id = media.json()["id"]
    job = api.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": file_id, "suffix": "a"},
        headers=bearer(key_a),
    )
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]

    # what a finished job leaves behind, without training: a checkpoint and a model, each
    # with an artifact in the store, plus a deployment and an evaluation row
    store: ArtifactStore = api.client.app.state.store  # type: ignore[attr-defined]
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "adapter_config.json").write_text('{"r": 8}')
    store.put_dir(artifact, f"models/{job_id}/model")
    store.put_dir(artifact, f"checkpoints/{job_id}/step-1/model")
    model_name = f"ft:tiny-llama:a:{job_id}"
    checkpoint_id = new_id("ftckpt")
    dep_id = new_id("dep")
    evaluation_id = new_id("eval")
    sweep_id = new_id("sweep")
    with make_session(api)() as session:
        session.add(
            FineTunedModelRow(
                id=model_name,
                project_id=project_a,
                job_id=job_id,
                base_model="tiny-llama",
                task="causal-lm",
                training_type="lora",
                format="adapter",
                artifact_key=f"models/{job_id}/model",
            )
        )
        session.add(
            JobCheckpointRow(
                id=checkpoint_id,
                job_id=job_id,
                step=1,
                model_name=f"{model_name}:ckpt-step-1",
                metrics={},
                artifact_key=f"checkpoints/{job_id}/step-1/model",
            )
        )
        session.add(
            DeploymentRow(
                id=dep_id, project_id=project_a, model=model_name, status="ready", requests_served=0
            )
        )
        session.add(
            EvaluationRow(
                id=evaluation_id,
                project_id=project_a,
                model=model_name,
                file_id=file_id,
                task="causal-lm",
                status="queued",
            )
        )
        session.add(
            SweepRow(
                id=sweep_id,
                project_id=project_a,
                status="cancelled",
                base_job={"model": "tiny-llama", "training_file": file_id},
                search_space={},
                objective={"metric": "eval_loss", "direction": "minimize"},
                n_trials=1,
                max_parallel=1,
                sampler="random",
                pruner="none",
                seed=0,
                study_name=sweep_id,
            )
        )
        session.commit()
    ids = {
        "file_id": file_id,
        "job_id": job_id,
        "checkpoint_id": checkpoint_id,
        "model_id": model_name,
        "dep_id": dep_id,
        "evaluation_id": evaluation_id,
        "sweep_id": sweep_id,
        "index": "0",
    }
    return Tenants(api, key_a, key_b, ids, media_file_id)


# not any project's: base-model pulls are the admin's, shared by every project
# (tests/app/hub/test_pull_api.py checks that other projects get a 403)
SHARED = "/v1/models/pulls/"


def call(tenants: Tenants, route: APIRoute, method: str, key: str) -> Any:
    path = route.path
    ids = tenants.ids
    if "/samples" in path:
        ids = {**ids, "file_id": tenants.media_file_id}
    for param in route.dependant.path_params:
        assert param.name in ids, f"no object for {{{param.name}}} in {route.path}"
        path = path.replace(f"{{{param.name}}}", ids[param.name])
        path = path.replace(f"{{{param.name}:path}}", ids[param.name])
    body = {"inputs": ["hello"]} if path.endswith("/predict") else None
    return tenants.api.client.request(method, path, json=body, headers=bearer(key))


def scoped_routes(tenants: Tenants) -> list[tuple[APIRoute, str]]:
    app = tenants.api.client.app
    found = [
        (route, method)
        for route in api_routes(app.routes)  # type: ignore[attr-defined]
        if route.path.startswith("/v1/")
        and route.dependant.path_params
        and not route.path.startswith(SHARED)
        for method in sorted(route.methods or ())
    ]
    # the walk must see every such operation the OpenAPI schema documents
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()  # type: ignore[attr-defined]
        if path.startswith("/v1/") and "{" in path and not path.startswith(SHARED)
        for method in operations
    }
    walked = {(method, route.path.replace(":path}", "}")) for route, method in found}
    assert documented <= walked, documented - walked
    return found


def test_another_projects_id_is_404_on_every_route(tenants: Tenants) -> None:
    routes = scoped_routes(tenants)
    assert len(routes) >= 15
    # GETs first with A's own key (they must work), then every route with B's key; the
    # mutating routes last, so a cancel or delete leak cannot hide a read leak
    for route, method in routes:
        if method == "GET":
            own = call(tenants, route, method, tenants.key_a)
            assert own.status_code == 200, (route.path, own.status_code, own.text)
    for route, method in sorted(routes, key=lambda rm: rm[1] != "GET"):
        other = call(tenants, route, method, tenants.key_b)
        assert other.status_code == 404, (method, route.path, other.status_code, other.text)
        assert other.json()["error"]["code"] == "not_found", other.text
    # nothing B did changed A's objects
    job = tenants.api.client.get(
        f"/v1/fine_tuning/jobs/{tenants.ids['job_id']}", headers=bearer(tenants.key_a)
    )
    assert job.json()["status"] == "validating_files"
    model = tenants.api.client.get(
        f"/v1/models/{tenants.ids['model_id']}", headers=bearer(tenants.key_a)
    )
    assert model.status_code == 200


def test_lists_show_only_the_callers_project(tenants: Tenants) -> None:
    client = tenants.api.client
    b_file = upload(tenants.api, tenants.key_b)["id"]
    for path, field in (
        ("/v1/files", "id"),
        ("/v1/fine_tuning/jobs", "id"),
        ("/v1/models", "id"),
        ("/v1/deployments", "id"),
        ("/v1/evaluations", "id"),
    ):
        seen_b = {
            item[field] for item in client.get(path, headers=bearer(tenants.key_b)).json()["data"]
        }
        seen_a = {
            item[field] for item in client.get(path, headers=bearer(tenants.key_a)).json()["data"]
        }
        assert not seen_b & set(tenants.ids.values()), (path, seen_b)
        assert seen_a & set(tenants.ids.values()), path
        assert b_file not in seen_a
    models_b = {
        m["id"] for m in client.get("/v1/models", headers=bearer(tenants.key_b)).json()["data"]
    }
    assert {"tiny-llama", "tiny-bert"} <= models_b  # base models are everyone's


def test_creating_with_another_projects_objects_is_refused(tenants: Tenants) -> None:
    client = tenants.api.client
    other = bearer(tenants.key_b)
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": tenants.ids["file_id"]},
        headers=other,
    )
    assert job.status_code == 400 and job.json()["error"]["code"] == "file_not_found", job.text
    b_file = upload(tenants.api, tenants.key_b)["id"]
    resumed = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "tiny-llama",
            "training_file": b_file,
            "from_checkpoint": tenants.ids["checkpoint_id"],
        },
        headers=other,
    )
    assert resumed.status_code == 400, resumed.text
    assert resumed.json()["error"]["code"] == "checkpoint_not_found"
    for path, body in (
        (
            "/v1/chat/completions",
            {"model": tenants.ids["model_id"], "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/completions", {"model": tenants.ids["model_id"], "prompt": "hi"}),
        ("/v1/predict", {"model": tenants.ids["model_id"], "inputs": ["hi"]}),
        ("/v1/deployments", {"model": tenants.ids["model_id"]}),
        ("/v1/evaluations", {"model": tenants.ids["model_id"], "file": b_file}),
        ("/v1/evaluations", {"model": "tiny-llama", "file": tenants.ids["file_id"]}),
    ):
        refused = client.post(path, json=body, headers=other)
        assert refused.status_code in (400, 404), (path, refused.status_code, refused.text)
        assert "not_found" in str(refused.json()["error"]["code"]), (path, refused.text)


def test_the_migration_gives_existing_rows_to_the_default_project(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO files (id, filename, purpose, bytes, created_at, created_ns, status,"
                " stats, errors, storage_key, deleted) VALUES ('file-old', 'a.jsonl',"
                " 'fine-tune', 3, 1, 1, 'processed', '{}', '[]', 'files/file-old/a.jsonl', 0)"
            )
        )
    upgrade(url)
    with engine.connect() as conn:
        project = conn.execute(text("SELECT id FROM projects WHERE name = 'default'")).scalar()
        owner = conn.execute(text("SELECT project_id FROM files WHERE id = 'file-old'")).scalar()
    engine.dispose()
    assert project is not None and owner == project

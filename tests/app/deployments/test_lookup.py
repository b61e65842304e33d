"""The serving cache: one read for many concurrent misses, no errors kept, nothing put back
that was forgotten meanwhile; a deployment deleted here stops answering at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.deployments.lookup import TtlCache
from app.failures import APIError
from app.tables import DeploymentRow
from tests.app.deployments.test_backpressure import deploy, make_api
from tests.app.inference_fake import FakeInference, TransactionWatch, engine_of


def test_concurrent_misses_share_one_load_and_errors_are_not_kept() -> None:
    async def scenario() -> None:
        cache: TtlCache[str, int] = TtlCache(60)
        loads = 0

        async def load() -> int:
            nonlocal loads
            loads += 1
            await asyncio.sleep(0.01)
            return loads

        assert await asyncio.gather(*(cache.get("a", load) for _ in range(20))) == [1] * 20
        assert await cache.get("a", load) == 1 and loads == 1

        async def fail() -> int:
            raise APIError(404, "missing")

        with pytest.raises(APIError):
            await cache.get("b", fail)
        assert await cache.get("b", load) == 2  # the failure was not kept

    asyncio.run(scenario())


def test_what_is_forgotten_during_a_load_is_not_put_back() -> None:
    async def scenario() -> None:
        cache: TtlCache[str, str] = TtlCache(60)
        started = asyncio.Event()
        release = asyncio.Event()

        async def stale() -> str:
            started.set()
            await release.wait()
            return "ready"

        pending = asyncio.ensure_future(cache.get("dep", stale))
        await started.wait()
        cache.forget(lambda key: key == "dep")  # deleted while the old row was being read
        release.set()
        assert await pending == "ready"

        async def fresh() -> str:
            return "deleted"

        assert await cache.get("dep", fresh) == "deleted"

    asyncio.run(scenario())


def test_a_deployment_deleted_here_stops_answering_at_once(
    migrated_database_url: str, tmp_path: Path, tiny_models: Path
) -> None:
    app = make_api(migrated_database_url, tmp_path, tiny_models, serving_cache_seconds=3600)
    app.state.inference = FakeInference(TransactionWatch(engine_of(app)))
    with TestClient(app) as client:
        dep_id = deploy(client, "tiny-bert")
        path = f"/v1/deployments/{dep_id}/predict"
        assert client.post(path, json={"inputs": ["x"]}).status_code == 200
        assert client.delete(f"/v1/deployments/{dep_id}").status_code == 200
        response = client.post(path, json={"inputs": ["x"]})
        assert response.status_code == 404 and response.json()["error"]["param"] == "deployment_id"


def test_without_a_cache_a_change_by_another_process_is_seen_at_once(
    migrated_database_url: str, tmp_path: Path, tiny_models: Path
) -> None:
    app = make_api(migrated_database_url, tmp_path, tiny_models, serving_cache_seconds=0)
    app.state.inference = FakeInference(TransactionWatch(engine_of(app)))
    with TestClient(app) as client:
        dep_id = deploy(client, "tiny-bert")
        path = f"/v1/deployments/{dep_id}/predict"
        assert client.post(path, json={"inputs": ["x"]}).status_code == 200
        with app.state.sessionmaker() as session:  # as another API process would
            session.execute(
                update(DeploymentRow).where(DeploymentRow.id == dep_id).values(deleted=True)
            )
            session.commit()
        assert client.post(path, json={"inputs": ["x"]}).status_code == 404

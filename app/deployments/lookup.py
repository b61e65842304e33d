"""What a deployment or a model serves, read at most once per TUNERY_SERVING_CACHE_SECONDS.

A predict needs the deployment's row and its model's serving spec. The row comes from the
async read path (app/reads.py: no thread, no transaction); the spec needs the fine-tuned
model's row and the base model's folder, read in a thread with a session that is closed
before the result is used. Both are kept for a couple of seconds, so a deployment under
load costs the database nothing per request, and concurrent misses share one read.

What this process changes it forgets at once: a deployment deleted, loaded or failed here
stops answering (or answers) on the next request. Another API process sees the change
within TUNERY_SERVING_CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.failures import not_found
from app.models.service import serving_spec
from app.reads import Reads

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
MAX_ENTRIES = 10_000


class TtlCache(Generic[K, V]):
    """Values for `seconds` (0: every get loads); errors are not kept. Runs on the event
    loop only."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}
        # a load that began before a forget() must not put back what was forgotten
        self._epoch = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() < entry[0]:
            return entry[1]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load, self._epoch))
            self._loading[key] = task
        # shielded: a client that goes away does not cancel the others' read
        return await asyncio.shield(task)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]], epoch: int) -> V:
        try:
            value = await load()
        finally:
            self._loading.pop(key, None)
        if epoch == self._epoch and self.seconds > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.seconds, value)
        return value

    def forget(self, match: Callable[[K], bool]) -> None:
        self._epoch += 1
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]


class Lookup:
    def __init__(
        self,
        reads: Reads,
        make_session: sessionmaker[Session],
        models_dir: Path,
        seconds: float,
    ) -> None:
        self.reads = reads
        self.make_session = make_session
        self.models_dir = models_dir
        self._deployments: TtlCache[tuple[str, str], Any] = TtlCache(seconds)
        self._specs: TtlCache[tuple[str, str | None, str], dict[str, Any]] = TtlCache(seconds)

    async def deployment(self, dep_id: str, project_id: str) -> Any:
        """The deployment's row (its columns as attributes); 404 when it does not exist, was
        deleted, or belongs to another project."""

        async def load() -> Any:
            row = await self.reads.deployment(dep_id, project_id)
            if row is None:
                raise not_found("deployment", dep_id, param="deployment_id")
            return row

        return await self._deployments.get((dep_id, project_id), load)

    async def spec(
        self, model_id: str, project_id: str | None, param: str = "model"
    ) -> dict[str, Any]:
        """The model's serving spec (app/models/service.py: serving_spec), or its 4xx."""

        def read() -> dict[str, Any]:
            with self.make_session() as session:
                return serving_spec(
                    session, self.models_dir, model_id, param=param, project_id=project_id
                )

        async def load() -> dict[str, Any]:
            return await asyncio.to_thread(read)

        return await self._specs.get((model_id, project_id, param), load)

    def forget_deployment(self, dep_id: str) -> None:
        self._deployments.forget(lambda key: key[0] == dep_id)

    def forget_model(self, model_id: str) -> None:
        self._specs.forget(lambda key: key[0] == model_id)

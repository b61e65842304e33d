"""An inference client that answers like the inference server without one, and checks at
every call that the API holds no database transaction (DESIGN.md: read, commit or close,
then call).

It replaces app.state.inference, where the routes take the real client from. The check
counts the transactions open on the app's engine (SQLAlchemy's begin/commit/rollback
events) and the connections checked out of its pool: both must be zero while the API waits
on another process. The async read path (app/reads.py) runs in autocommit on connections
of its own, so it never counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.inference_client import PredictStream


@dataclass
class TransactionWatch:
    engine: Engine
    open: int = 0
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "commit", self._end)
        event.listen(self.engine, "rollback", self._end)

    def _begin(self, _conn: Any) -> None:
        self.open += 1

    def _end(self, _conn: Any) -> None:
        self.open = max(0, self.open - 1)

    def check(self, call: str) -> None:
        checked_out = self.engine.pool.checkedout()  # type: ignore[attr-defined]
        if self.open or checked_out:
            message = (
                f"{call} called with {self.open} database transaction(s) open and "
                f"{checked_out} pooled connection(s) checked out"
            )
            self.violations.append(message)
            raise AssertionError(message)

    def detach(self) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "commit", self._end)
        event.remove(self.engine, "rollback", self._end)


def engine_of(app: FastAPI) -> Engine:
    engine: Engine = app.state.sessionmaker.kw["bind"]
    return engine


class FakeInference:
    """Answers load, predict (classification or causal LM by the spec's task), streams,
    unload and export as the inference server would; `gate`, when set, makes predict wait
    for it (to hold requests in flight)."""

    base_url = "http://fake-inference"

    def __init__(self, watch: TransactionWatch) -> None:
        self.watch = watch
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.waiting = 0
        # streams send one piece of text, then wait for this event before finishing
        self.hold_streams = False
        self.streams_closed = 0

    def _call(self, name: str) -> None:
        self.calls.append(name)
        self.watch.check(name)

    async def aclose(self) -> None:
        return None

    async def healthy(self) -> bool:
        return True

    async def load(self, spec: dict[str, Any], pin: bool = True) -> dict[str, Any]:
        self._call("load")
        return {"key": spec["key"], "load_seconds": 0.01, "memory_bytes": 10, "base": None}

    async def unload(self, key: str) -> None:
        self._call("unload")

    async def export_merged(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._call("export_merged")
        return {"artifact": spec["artifact"]}

    async def predict(
        self,
        spec: dict[str, Any],
        inputs: list[Any],
        parameters: dict[str, Any],
        pin: bool | None = None,
    ) -> dict[str, Any]:
        self._call("predict")
        if self.gate is not None:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        return {"predictions": [prediction(spec, item) for item in inputs]}

    async def stream_predict(
        self,
        spec: dict[str, Any],
        one_input: Any,
        parameters: dict[str, Any],
        pin: bool | None = None,
    ) -> PredictStream:
        self._call("stream_predict")
        if self.hold_streams:
            return HeldStream(self)
        return PredictStream.of_prediction({"predictions": [prediction(spec, one_input)]})


class HeldStream(PredictStream):
    """A generation that sends one piece of text and then takes forever."""

    def __init__(self, fake: FakeInference) -> None:
        super().__init__(None, None)
        self.fake = fake
        self.closed = False

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.fake.streams_closed += 1

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"text": " hello"}
            await asyncio.Event().wait()
        finally:
            await self.aclose()


def prediction(spec: dict[str, Any], item: Any) -> dict[str, Any]:
    if spec["task"] == "classification":
        return {"label": "pos", "score": 0.9, "scores": {"pos": 0.9, "neg": 0.1}}
    return {"text": " hello", "finish_reason": "length", "prompt_tokens": 3, "completion_tokens": 2}

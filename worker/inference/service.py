"""What the inference server does, without HTTP: load, unload, predict, stream, report.

Every method blocks (torch work, file I/O) except predict_async; the server calls them from
a threadpool. A predict checks its parameters, gets the model from the cache (loading it
just in time, on the shared copy of its base) and hands it to the base's engine, which the
service creates with the base and closes when the base goes: micro-batching for
classification, continuous batching for generation (engine.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import torch

from app.storage import ArtifactStore
from worker.inference.batching import MicroBatcher
from worker.inference.cache import ModelCache, Recipe
from worker.inference.engine import UNLOADED, Engine, EngineLimits
from worker.inference.errors import ModelLoadError
from worker.inference.export import export_merged
from worker.inference.jobs import Job, prepare
from worker.inference.loading import (
    LoadedModel,
    LoadPlan,
    ModelSpec,
    load_served,
    load_shared,
    plan,
)
from worker.inference.predictors import (
    Classification,
    Generation,
    PromptInput,
)
from worker.inference.scheduler import DecodeEngine
from worker.inference.schemas import BaseStats, ModelStats
from worker.inference.shared import SharedModel
from worker.inference.tasks import check_request, predictor

log = logging.getLogger(__name__)

DEFAULTS = EngineLimits()


class InferenceService:
    def __init__(
        self,
        store: ArtifactStore,
        max_models: int = 16,
        memory_budget_bytes: int | None = None,
        max_batch_size: int = DEFAULTS.max_batch_size,
        max_wait_ms: float = DEFAULTS.max_wait_ms,
        max_running: int = DEFAULTS.max_running,
        max_queue: int = DEFAULTS.max_queue,
    ) -> None:
        self.store = store
        self.limits = EngineLimits(max_batch_size, max_wait_ms, max_running, max_queue)
        self.cache: ModelCache[LoadedModel, SharedModel] = ModelCache(
            max_models,
            memory_budget_bytes,
            on_evict=self._detach,
            on_release_shared=self._release,
        )
        # one engine per loaded base; SharedModel hashes by identity, so a base loaded again
        # under the same key never meets the engine of the copy that went
        self._engines: dict[SharedModel, Engine] = {}
        self._engines_lock = threading.Lock()
        # exports are rare and write one store key each; two at once would race on that key
        self._export_lock = threading.Lock()

    # -- models ----------------------------------------------------------------------------

    def load(self, spec: ModelSpec, pin: bool | None = None) -> LoadedModel:
        """The loaded model for spec, loading it once; raises ModelLoadError."""
        with self.using(spec, pin) as loaded:
            return loaded

    def acquire(self, spec: ModelSpec, pin: bool | None = None) -> LoadedModel:
        """The loaded model for spec, kept from eviction until cache.release()."""
        loaded = self.cache.acquire(spec.key, self._recipe(spec), pin)
        if loaded.spec != spec:
            # keys name immutable models, so a different spec under a known key means the
            # control plane moved something (a base directory, a re-export): load afresh
            log.warning("model %s requested with a new spec; reloading", spec.key)
            keep_pin = self.cache.is_pinned(spec.key) if pin is None else pin
            self.cache.release(spec.key, loaded)
            self.cache.unload(spec.key)
            loaded = self.cache.acquire(spec.key, self._recipe(spec), keep_pin)
        return loaded

    @contextmanager
    def using(self, spec: ModelSpec, pin: bool | None = None) -> Iterator[LoadedModel]:
        """The loaded model for spec, kept from eviction until the block ends."""
        loaded = self.acquire(spec, pin)
        try:
            yield loaded
        finally:
            self.cache.release(spec.key, loaded)

    def _recipe(self, spec: ModelSpec) -> Callable[[], Recipe[LoadedModel, SharedModel]]:
        def prepare() -> Recipe[LoadedModel, SharedModel]:
            # runs on a cache miss only: the checks read files, a hit must stay cheap
            load = plan(spec, self.store)
            started = time.perf_counter()

            def attach(shared: SharedModel | None) -> LoadedModel:
                assert shared is not None
                loaded = load_served(load, shared)
                # the time this model took to become servable, its base's load included
                loaded.load_seconds = time.perf_counter() - started
                return loaded

            return Recipe(attach, load.shared_key, lambda: self._new_shared(load))

        return prepare

    def _new_shared(self, load: LoadPlan) -> SharedModel:
        shared = load_shared(load)
        engine = self._new_engine(shared)
        with self._engines_lock:
            self._engines[shared] = engine
        return shared

    def _new_engine(self, shared: SharedModel) -> Engine:
        if predictor(shared.task).engine == "decode":
            return DecodeEngine(shared, self.limits)
        return MicroBatcher(shared, self.limits)

    def engine_of(self, loaded: LoadedModel) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(loaded.shared)
        if engine is None:
            raise ModelLoadError(UNLOADED)
        return engine

    def unload(self, key: str) -> bool:
        return self.cache.unload(key)

    def export_merged(self, spec: ModelSpec) -> str:
        """Store key of a full-model copy of spec's artifact (adapters merged into the base)."""
        with self._export_lock:
            return export_merged(spec, self.store)

    def reports(self) -> list[ModelStats]:
        """Per model: an adapter's memory_bytes are its own tensors and base_memory_bytes the
        base copy it shares; any other model's memory_bytes are its whole weights."""
        shared = {s["key"]: s["memory_bytes"] for s in self.cache.shared_stats()}
        reports: list[ModelStats] = []
        for entry in self.cache.stats():
            base_bytes = shared.get(entry["shared"] or "", 0)
            loaded = self.cache.get_quietly(entry["key"])
            adapter = loaded is not None and loaded.format == "adapter"
            reports.append(
                ModelStats(
                    key=entry["key"],
                    pinned=entry["pinned"],
                    load_seconds=entry["load_seconds"],
                    memory_bytes=entry["memory_bytes"] if adapter else base_bytes,
                    base=entry["shared"],
                    base_memory_bytes=base_bytes if adapter else None,
                    requests_served=entry["requests_served"],
                    loaded_at=entry["loaded_at"],
                    last_used=entry["last_used"],
                )
            )
        return reports

    def base_reports(self) -> list[BaseStats]:
        """Per loaded base: its memory, the models on it and what its engine is doing."""
        with self._engines_lock:
            engines = {shared.key: engine for shared, engine in self._engines.items()}
        reports = []
        for entry in self.cache.shared_stats():
            engine = engines.get(entry["key"])
            stats = engine.stats() if engine is not None else None
            reports.append(
                BaseStats(
                    **entry,
                    waiting=stats.waiting if stats else 0,
                    running=stats.running if stats else 0,
                    batches=stats.steps if stats else 0,
                    batched_rows=stats.rows if stats else 0,
                    largest_batch=stats.largest_batch if stats else 0,
                )
            )
        return reports

    def _detach(self, key: str, loaded: LoadedModel) -> None:
        name = loaded.adapter_name
        if name is None:
            return
        # on the base's engine thread, between forwards: the caller may be the event loop,
        # which must not wait for a forward to end
        with self._engines_lock:
            engine = self._engines.get(loaded.shared)
        if engine is None or not engine.call(lambda: loaded.shared.detach(name)):
            loaded.shared.detach(name)

    def _release(self, key: str, shared: SharedModel) -> None:
        with self._engines_lock:
            engine = self._engines.pop(shared, None)
        if engine is not None:
            engine.close()
        # the released weights are garbage once in-flight requests drop them; hand the
        # cached blocks back so the next load does not run out of GPU memory
        if shared.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- predicting ------------------------------------------------------------------------

    def predict(
        self,
        spec: ModelSpec,
        inputs: Sequence[PromptInput],
        parameters: Mapping[str, Any],
        pin: bool | None = None,
    ) -> list[Classification] | list[Generation]:
        """Raises PredictionInputError for inputs or parameters the task cannot take, and
        ModelLoadError when the model cannot be loaded."""
        check_parameters(spec, inputs, parameters)
        with self.using(spec, pin) as loaded:
            job = Job(model=loaded, inputs=list(inputs), parameters=parameters)
            predictions = self._submit(job).result()
        self.cache.mark_served(spec.key)
        return predictions

    async def predict_async(
        self,
        spec: ModelSpec,
        inputs: Sequence[PromptInput],
        parameters: Mapping[str, Any],
        pin: bool | None = None,
    ) -> list[Classification] | list[Generation]:
        """predict for an event loop: the loop hands the request to the base's batcher and
        awaits it, with no thread in between (each hand-off costs latency on a busy CPU).
        A model that is not loaded yet loads in a worker thread."""
        check_parameters(spec, inputs, parameters)
        held = self.cache.hold(spec.key, pin)
        if held is None or held.spec != spec:
            if held is not None:
                self.cache.release(spec.key, held)
            held = await asyncio.to_thread(self.acquire, spec, pin)
        job = Job(model=held, inputs=list(inputs), parameters=parameters)
        try:
            predictions = await asyncio.wrap_future(self._submit(job))
        except asyncio.CancelledError:
            # the caller went away: its rows leave the decode batch at the next step
            job.cancel.set()
            raise
        finally:
            self.cache.release(spec.key, held)
        self.cache.mark_served(spec.key)
        return predictions

    def _submit(self, job: Job) -> Future[list[Any]]:
        """Raises Overloaded when the base's queue is full."""
        return self.engine_of(job.model).submit(job)

    def open_stream(
        self,
        spec: ModelSpec,
        item: PromptInput,
        parameters: Mapping[str, Any],
        emit: Callable[[str | dict[str, Any] | BaseException | None], None],
        pin: bool | None = None,
    ) -> threading.Event:
        """Start streaming one generation; problems found before it starts are raised.

        Afterwards `emit` gets each text delta (`{"text"}`, with `index` when n > 1 and
        `logprobs` when asked for), then either the closing event (`closing_event`) or the
        exception that ended it, then None. Setting the returned event stops the generation
        early. Raises Overloaded, PredictionInputError and ModelLoadError before anything is
        emitted.
        """
        _check_stream(spec, item, parameters)
        return self._start_stream(spec, self.acquire(spec, pin), item, parameters, emit)

    async def open_stream_async(
        self,
        spec: ModelSpec,
        item: PromptInput,
        parameters: Mapping[str, Any],
        emit: Callable[[str | dict[str, Any] | BaseException | None], None],
        pin: bool | None = None,
    ) -> threading.Event:
        """open_stream for an event loop: a loaded model's stream starts without a thread hop
        (tokenizing one prompt costs less than handing it to a thread on a busy CPU)."""
        _check_stream(spec, item, parameters)
        held = self.cache.hold(spec.key, pin)
        if held is None or held.spec != spec:
            if held is not None:
                self.cache.release(spec.key, held)
            held = await asyncio.to_thread(self.acquire, spec, pin)
        job = Job(model=held, inputs=[item], parameters=parameters, emit=emit)
        if parameters.get("response_format") or (not isinstance(item, str) and item.get("tools")):
            # compiling a grammar (the first one indexes the whole vocabulary) must not stall
            # the event loop
            try:
                await asyncio.to_thread(prepare, job)
            except BaseException:
                self.cache.release(spec.key, held)
                raise
        return self._start_stream(spec, held, item, parameters, emit, job)

    def _start_stream(
        self,
        spec: ModelSpec,
        loaded: LoadedModel,
        item: PromptInput,
        parameters: Mapping[str, Any],
        emit: Callable[[str | dict[str, Any] | BaseException | None], None],
        job: Job | None = None,
    ) -> threading.Event:
        """Submit a stream on `loaded` (acquired; released when the stream ends)."""
        try:
            if job is None:
                job = Job(model=loaded, inputs=[item], parameters=parameters, emit=emit)
            # a stream reports problems before it starts, as an ordinary error response
            prepare(job)
            future = self._submit(job)
        except BaseException:
            self.cache.release(spec.key, loaded)
            raise

        def done(settled: Future[list[Any]]) -> None:
            self.cache.release(spec.key, loaded)
            if settled.cancelled():
                emit(None)
                return
            error = settled.exception()
            if error is not None:
                emit(error)
            else:
                emit(closing_event(settled.result()))
                self.cache.mark_served(spec.key)
            emit(None)

        future.add_done_callback(done)
        return job.cancel


def closing_event(results: Sequence[Generation]) -> dict[str, Any]:
    """The last event of a stream: `{"finish_reason", "prompt_tokens", "completion_tokens"}`
    (and `tool_calls` when the reply called tools) of its one sequence; with n > 1 also
    `choices`, each sequence's own, and completion_tokens summed over them. The text and
    logprobs went out in the deltas."""
    choices = [
        {k: v for k, v in result.items() if k not in ("text", "logprobs", "prompt_tokens")}
        for result in results
    ]
    event: dict[str, Any] = {
        **choices[0],
        "prompt_tokens": results[0]["prompt_tokens"],
        "completion_tokens": sum(r["completion_tokens"] for r in results),
    }
    if len(results) > 1:
        event["choices"] = [{"index": i, **c} for i, c in enumerate(choices)]
    return event


def _check_stream(spec: ModelSpec, item: PromptInput, parameters: Mapping[str, Any]) -> None:
    check_request(spec.task, [item], parameters, stream=True)


def check_parameters(
    spec: ModelSpec, inputs: Sequence[PromptInput], parameters: Mapping[str, Any]
) -> None:
    """Refuse what the task would ignore or cannot read, before paying for a load."""
    check_request(spec.task, inputs, parameters)

"""What the inference server does, without HTTP: load, unload, predict, stream, report.

Every method blocks (torch work, file I/O); the server calls them from a threadpool. A
predict checks its parameters, gets the model from the cache (loading it just in time, on
the shared copy of its base), tokenizes its inputs in the caller's thread, and hands them
to the base's batcher, which runs them together with whatever else is waiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from typing import Any, TypedDict

import torch

from app.storage import ArtifactStore
from worker.inference.batching import Batcher, Job, StreamSink, prepare
from worker.inference.cache import ModelCache, Recipe
from worker.inference.export import export_merged
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
    PredictionInputError,
    PromptInput,
)
from worker.inference.shared import SharedModel

log = logging.getLogger(__name__)

CLASSIFICATION_PARAMETERS = frozenset({"top_k"})
GENERATION_PARAMETERS = frozenset({"max_new_tokens", "temperature", "top_p", "stop", "seed"})
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5.0


class ModelReport(TypedDict):
    key: str
    pinned: bool
    load_seconds: float
    memory_bytes: int
    base: str | None
    base_memory_bytes: int | None
    requests_served: int
    loaded_at: float
    last_used: float


class InferenceService:
    def __init__(
        self,
        store: ArtifactStore,
        max_models: int = 16,
        memory_budget_bytes: int | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    ) -> None:
        self.store = store
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.cache: ModelCache[LoadedModel, SharedModel] = ModelCache(
            max_models,
            memory_budget_bytes,
            on_evict=_detach,
            on_release_shared=_release,
        )
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
        shared.batcher = Batcher(shared, self.max_batch_size, self.max_wait_ms)
        return shared

    def unload(self, key: str) -> bool:
        return self.cache.unload(key)

    def export_merged(self, spec: ModelSpec) -> str:
        """Store key of a full-model copy of spec's artifact (adapters merged into the base)."""
        with self._export_lock:
            return export_merged(spec, self.store)

    def reports(self) -> list[ModelReport]:
        """Per model: an adapter's memory_bytes are its own tensors and base_memory_bytes the
        base copy it shares; any other model's memory_bytes are its whole weights."""
        shared = {s["key"]: s["memory_bytes"] for s in self.cache.shared_stats()}
        reports: list[ModelReport] = []
        for entry in self.cache.stats():
            base_bytes = shared.get(entry["shared"] or "", 0)
            loaded = self.cache.get_quietly(entry["key"])
            adapter = loaded is not None and loaded.format == "adapter"
            reports.append(
                {
                    "key": entry["key"],
                    "pinned": entry["pinned"],
                    "load_seconds": entry["load_seconds"],
                    "memory_bytes": entry["memory_bytes"] if adapter else base_bytes,
                    "base": entry["shared"],
                    "base_memory_bytes": base_bytes if adapter else None,
                    "requests_served": entry["requests_served"],
                    "loaded_at": entry["loaded_at"],
                    "last_used": entry["last_used"],
                }
            )
        return reports

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
            predictions = self._submit(loaded, inputs, parameters).result()
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
        try:
            predictions = await asyncio.wrap_future(self._submit(held, inputs, parameters))
        finally:
            self.cache.release(spec.key, held)
        self.cache.mark_served(spec.key)
        return predictions

    def _submit(
        self,
        loaded: LoadedModel,
        inputs: Sequence[PromptInput],
        parameters: Mapping[str, Any],
        stream: StreamSink | None = None,
    ) -> Future[list[Any]]:
        job = Job(model=loaded, inputs=list(inputs), parameters=parameters, stream=stream)
        if stream is not None:
            # a stream reports problems before it starts, as an ordinary error response
            prepare(job)
        assert loaded.shared.batcher is not None
        return loaded.shared.batcher.submit(job)

    def open_stream(
        self,
        spec: ModelSpec,
        item: PromptInput,
        parameters: Mapping[str, Any],
        emit: Callable[[str | dict[str, Any] | BaseException | None], None],
        pin: bool | None = None,
    ) -> threading.Event:
        """Start streaming one generation; problems found before it starts are raised.

        Afterwards `emit` gets each text delta (str), then either the closing
        `{"finish_reason", "prompt_tokens", "completion_tokens"}` or the exception that
        ended it, then None. Setting the returned event stops the generation early.
        """
        if spec.task != "causal-lm":
            raise PredictionInputError(
                f"stream applies to causal-lm models; {spec.key!r} does {spec.task}",
                param="stream",
                code="unsupported_parameter",
            )
        check_parameters(spec, [item], parameters)
        stack = ExitStack()
        loaded = stack.enter_context(self.using(spec, pin))
        try:
            sink = StreamSink(emit=emit)
            future = self._submit(loaded, [item], parameters, sink)
        except BaseException:
            stack.close()
            raise

        def done(settled: Any) -> None:
            stack.close()
            error = settled.exception()
            if error is not None:
                emit(error)
            else:
                (result,) = settled.result()
                emit({k: v for k, v in result.items() if k != "text"})
                self.cache.mark_served(spec.key)
            emit(None)

        future.add_done_callback(done)
        return sink.cancel


def check_parameters(
    spec: ModelSpec, inputs: Sequence[PromptInput], parameters: Mapping[str, Any]
) -> None:
    """Refuse what the task would ignore, before paying for a load."""
    allowed = CLASSIFICATION_PARAMETERS if spec.task == "classification" else GENERATION_PARAMETERS
    for name, value in parameters.items():
        if value is not None and name not in allowed:
            raise PredictionInputError(
                f"parameter {name!r} does not apply to task {spec.task!r}; "
                f"allowed: {', '.join(sorted(allowed))}",
                param=f"parameters.{name}",
                code="unsupported_parameter",
            )
    if spec.task == "classification":
        for index, item in enumerate(inputs):
            if not isinstance(item, str):
                raise PredictionInputError(
                    f"inputs[{index}]: a classification model takes plain strings, not messages",
                    code="unsupported_input",
                )


def _detach(key: str, loaded: LoadedModel) -> None:
    name = loaded.adapter_name
    if name is None:
        return
    # on the base's batcher thread, between forwards: the caller may be the event loop,
    # which must not wait for a forward to end
    batcher = loaded.shared.batcher
    if batcher is None or not batcher.call(lambda: loaded.shared.detach(name)):
        loaded.shared.detach(name)


def _release(key: str, shared: SharedModel) -> None:
    shared.close()
    # the evicted weights are garbage once in-flight requests drop them; hand the cached
    # blocks back so the next load does not run out of GPU memory
    if shared.device.type == "cuda":
        torch.cuda.empty_cache()

"""What the inference server does, without HTTP: load, unload, predict, report.

Every method blocks (torch work, file I/O); the server calls them from a threadpool. The
per-request path is `predict` -> `_run`, the place where a micro-batcher would sit: it
would queue requests per model and call the predictors once for several of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from app.storage import ArtifactStore
from worker.inference.cache import EntryStats, ModelCache
from worker.inference.export import export_merged
from worker.inference.loading import LoadedModel, ModelSpec, load_model
from worker.inference.predictors import (
    Classification,
    Generation,
    PredictionInputError,
    PromptInput,
    classify,
    generate,
)

log = logging.getLogger(__name__)

CLASSIFICATION_PARAMETERS = frozenset({"top_k"})
GENERATION_PARAMETERS = frozenset({"max_new_tokens", "temperature", "top_p", "stop", "seed"})

Loader = Callable[[ModelSpec, ArtifactStore], LoadedModel]


def _free_accelerator_memory(key: str, model: LoadedModel) -> None:
    # the evicted weights are garbage once in-flight requests drop them; hand the cached
    # blocks back so the next load does not run out of GPU memory
    if model.device.type == "cuda":
        torch.cuda.empty_cache()


class InferenceService:
    def __init__(
        self,
        store: ArtifactStore,
        max_models: int = 4,
        memory_budget_bytes: int | None = None,
        loader: Loader = load_model,
    ) -> None:
        self.store = store
        self.cache: ModelCache[LoadedModel] = ModelCache(
            max_models, memory_budget_bytes, on_evict=_free_accelerator_memory
        )
        self._loader = loader
        # exports are rare and write one store key each; two at once would race on that key
        self._export_lock = threading.Lock()

    def load(self, spec: ModelSpec, pin: bool | None = None) -> LoadedModel:
        """The loaded model for spec, loading it once; raises ModelLoadError."""
        loaded = self.cache.get_or_load(spec.key, lambda: self._loader(spec, self.store), pin)
        if loaded.spec != spec:
            # keys name immutable models, so a different spec under a known key means the
            # control plane moved something (a base directory, a re-export): load it afresh
            log.warning("model %s requested with a new spec; reloading", spec.key)
            keep_pin = self.cache.is_pinned(spec.key) if pin is None else pin
            self.cache.unload(spec.key)
            loaded = self.cache.get_or_load(
                spec.key, lambda: self._loader(spec, self.store), keep_pin
            )
        return loaded

    def export_merged(self, spec: ModelSpec) -> str:
        """Store key of a full-model copy of spec's artifact (adapters merged into the base)."""
        with self._export_lock:
            return export_merged(spec, self.store)

    def unload(self, key: str) -> bool:
        return self.cache.unload(key)

    def stats(self) -> list[EntryStats]:
        return self.cache.stats()

    def predict(
        self,
        spec: ModelSpec,
        inputs: Sequence[PromptInput],
        parameters: Mapping[str, Any],
    ) -> list[Classification] | list[Generation]:
        """Raises PredictionInputError for inputs or parameters the task cannot take, and
        ModelLoadError when the model cannot be loaded."""
        check_parameters(spec, inputs, parameters)
        loaded = self.load(spec)
        with loaded.lock:
            predictions = _run(loaded, inputs, parameters)
        self.cache.mark_served(spec.key)
        return predictions


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


def _run(
    loaded: LoadedModel, inputs: Sequence[PromptInput], parameters: Mapping[str, Any]
) -> list[Classification] | list[Generation]:
    given = {k: v for k, v in parameters.items() if v is not None}
    if loaded.spec.task == "classification":
        texts = [item for item in inputs if isinstance(item, str)]
        return classify(loaded.model, loaded.tokenizer, texts, top_k=given.get("top_k"))
    return generate(loaded.model, loaded.tokenizer, inputs, **given)

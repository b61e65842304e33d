"""One predict request on its way through an engine: its model, inputs, options and future.

The engines (micro-batching for classification, continuous batching for generation) take
the same Job. `prepare` tokenizes it and checks what only the tokens tell; the caller does
that itself when an error must come back before anything starts (a stream).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from task_plugins.media.predicting import prepare as media_prepare
from worker.inference.loading import MEDIA_TASKS, LoadedModel
from worker.inference.predictors import (
    GenerationOptions,
    PromptInput,
    check_context,
    encode_prompt,
    encode_texts,
    max_input_tokens,
)


@dataclass(eq=False)
class Job:
    model: LoadedModel
    inputs: Sequence[PromptInput]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    # a streamed generation: each new piece of text goes here as it is decided
    emit: Callable[[str], None] | None = None
    future: Future[list[Any]] = field(default_factory=Future)
    # set when nobody waits for the answer any more (the client went away)
    cancel: threading.Event = field(default_factory=threading.Event)
    # token ids per input; decoded pictures or sounds for an image or audio model
    rows: list[Any] | None = None
    top_k: int | None = None  # classification
    options: GenerationOptions | None = None  # generation

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set() or self.future.cancelled()

    def resolve(self, result: list[Any]) -> None:
        # the waiting side may cancel the future from its own thread at any moment
        if not self.future.done():
            with suppress(InvalidStateError):
                self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            with suppress(InvalidStateError):
                self.future.set_exception(error)


def prepare(job: Job) -> None:
    """Tokenize the job's inputs and check what only the tokens tell (prompt length, a chat
    template); raises PredictionInputError."""
    if job.rows is not None:
        return
    given = {k: v for k, v in job.parameters.items() if v is not None}
    loaded = job.model
    config = loaded.shared.config
    if loaded.spec.task in MEDIA_TASKS:
        job.top_k = given.get("top_k")
        job.rows = media_prepare(loaded.tokenizer, loaded.spec.task, job.inputs)
        return
    with loaded.tokenizer_lock:
        if loaded.spec.task == "classification":
            texts = [item for item in job.inputs if isinstance(item, str)]
            job.top_k = given.get("top_k")
            job.rows = encode_texts(loaded.tokenizer, texts, max_input_tokens(config))
            return
        options = GenerationOptions.of(given)
        prompts = [encode_prompt(loaded.tokenizer, item, i) for i, item in enumerate(job.inputs)]
    check_context(config, prompts, options.max_new_tokens)
    job.options = options
    job.rows = prompts

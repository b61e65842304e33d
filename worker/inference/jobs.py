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

from worker.inference.loading import LoadedModel
from worker.inference.predictors import (
    GenerationOptions,
    PredictionInputError,
    PromptInput,
    check_context,
    encode_prompt,
    eos_ids,
    rendered_tools,
)
from worker.inference.tasks import batch_hooks, predictor
from worker.inference.tools import ToolFormat, tool_format


@dataclass(eq=False)
class Job:
    model: LoadedModel
    inputs: Sequence[PromptInput]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    # a streamed generation: each new piece of text goes here as it is decided, as
    # {"text": delta} (with "index" when n > 1, "logprobs" when asked for)
    emit: Callable[[dict[str, Any]], None] | None = None
    future: Future[list[Any]] = field(default_factory=Future)
    # set when nobody waits for the answer any more (the client went away)
    cancel: threading.Event = field(default_factory=threading.Event)
    # token ids per input; decoded pictures or sounds for an image or audio model
    rows: list[Any] | None = None
    top_k: int | None = None  # classification
    options: GenerationOptions | None = None  # generation
    # per input: the compiled grammar its rows decode under (xgrammar), and the convention
    # its tool calls are parsed in
    grammars: list[Any] | None = None
    tool_formats: list[ToolFormat | None] | None = None

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
    if predictor(loaded.spec.task).engine == "batch":
        job.top_k = given.get("top_k")
        with loaded.tokenizer_lock:
            job.rows = batch_hooks(loaded.spec.task).prepare(loaded.tokenizer, job.inputs, config)
        return
    with loaded.tokenizer_lock:
        options = GenerationOptions.of(given)
        prompts = [encode_prompt(loaded.tokenizer, item, i) for i, item in enumerate(job.inputs)]
        formats = [_tool_format(loaded, item, i) for i, item in enumerate(job.inputs)]
    check_context(config, prompts, options.max_new_tokens)
    job.grammars = [
        _grammar(loaded, item, options, fmt, i)
        for i, (item, fmt) in enumerate(zip(job.inputs, formats, strict=True))
    ]
    job.tool_formats = formats
    job.options = options
    job.rows = prompts


def _tool_format(loaded: LoadedModel, item: PromptInput, index: int) -> ToolFormat | None:
    tools = rendered_tools(item)
    if tools is None:
        return None
    return tool_format(getattr(loaded.tokenizer, "chat_template", None), tools, index)


def _grammar(
    loaded: LoadedModel,
    item: PromptInput,
    options: GenerationOptions,
    fmt: ToolFormat | None,
    index: int,
) -> Any:
    """The compiled grammar an input's rows must follow, or None."""
    forced = _forced_tool(item) if fmt is not None else None
    response_format = options.response_format
    if response_format is not None and response_format.get("type") == "text":
        response_format = None
    if forced is None and response_format is None:
        return None
    if forced is not None and response_format is not None:
        raise PredictionInputError(
            "response_format and a required tool call cannot both hold for one reply; send "
            'tool_choice "auto" or drop response_format',
            param="parameters.response_format",
        )
    from worker.inference.constrained import grammars_for

    model = loaded.shared.model
    embeddings = model.get_output_embeddings()
    vocab_size = int(embeddings.weight.shape[0]) if embeddings is not None else config_vocab(model)
    grammars = grammars_for(loaded.tokenizer, vocab_size, eos_ids(model, loaded.tokenizer))
    if response_format is not None:
        return grammars.response_format(response_format)
    assert fmt is not None and forced is not None and not isinstance(item, str)
    only = None if forced == "required" else forced
    prefix, schema, suffix = fmt.call_grammar_parts(item["tools"], only)
    return grammars.tool_call(prefix, schema, suffix, f"inputs.{index}.tools")


def _forced_tool(item: PromptInput) -> str | None:
    """ "required", the name of the one function the reply must call, or None."""
    if isinstance(item, str):
        return None
    choice = item.get("tool_choice")
    if choice == "required":
        return "required"
    if isinstance(choice, Mapping):
        return str(choice["function"]["name"])
    return None


def config_vocab(model: Any) -> int:
    return int(model.config.vocab_size)

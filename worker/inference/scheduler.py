"""Continuous batching for generation: sequences join a running decode batch at token
boundaries and leave it when they finish, as in vLLM and TGI.

One DecodeEngine per causal-LM base, with one thread that owns the base's forwards. Each
turn of its loop:

1. takes what arrived (requests, work between steps, a stop);
2. admits waiting sequences into free slots (`max_running` per base): tokenizes their
   request, prefills their prompts together, picks each one's first token, and joins them
   to the running batch's cache;
3. decodes one token for every running sequence in one forward;
4. retires the sequences that finished (eos, a stop string, max_new_tokens, the client
   gone) and settles each request whose sequences are all done.

So a short request that arrives while a long one runs starts within one step and finishes
first, and a stream's tokens go out as they come. Each sequence decodes with its own
options (runner.py computes the logits, sampling.py picks the token per row), and rows of
different adapters share the forward through peft's mixed-adapter batches. A base whose
adapters cannot mix runs one batch per adapter, a step each in turn.

Requests wait in a queue bounded by `max_queue`; beyond it they are refused at once
(errors.Overloaded) rather than left to time out.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.inference.constrained import RowConstraint, mask
from worker.inference.engine import UNLOADED, EngineLimits, ThreadedEngine
from worker.inference.errors import ModelLoadError
from worker.inference.jobs import Job, prepare
from worker.inference.logprobs import TokenLogprob, public, row_logprobs
from worker.inference.predictors import Generation, GenerationOptions, eos_ids, finish
from worker.inference.runner import KVBatch, accepts_logits_to_keep, decode, join, keep, prefill
from worker.inference.sampling import RowSampling, next_tokens, row_sampling
from worker.inference.shared import SharedModel
from worker.inference.streaming import TextWatch
from worker.inference.tools import ToolFormat

log = logging.getLogger(__name__)

# padded prompt tokens one prefill may hold: newcomers beyond it wait for the next step, so
# a crowd of long prompts does not stall the running sequences for one huge forward
PREFILL_TOKEN_BUDGET = 8192


@dataclass(eq=False)
class _Request:
    """A job being served: its sequences' results as they finish."""

    job: Job
    results: list[Generation | None]
    left: int


@dataclass(eq=False)
class _Sequence:
    request: _Request
    index: int  # the input of the request it generates for
    prompt: list[int]
    options: GenerationOptions
    sampling: RowSampling
    adapter: str | None
    eos: frozenset[int]
    watch: TextWatch | None
    constraint: RowConstraint | None = None
    tool_format: ToolFormat | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: bool = False

    @property
    def job(self) -> Job:
        return self.request.job

    def add(self, token: int, logprob: TokenLogprob | None = None) -> None:
        self.tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        if self.constraint is not None and not self.constraint.accept(token):
            # the mask allowed only what the grammar accepts; stop rather than go astray
            log.error("a constrained row picked token %d its grammar refuses", token)
            self.done = True
            return
        if token in self.eos:
            self.done = True
            return
        if self.watch is not None and self.watch.update(self.tokens, self.logprobs):
            self.done = True
        if len(self.tokens) >= self.options.max_new_tokens:
            self.done = True


@dataclass(eq=False)
class _Batch:
    """Sequences decoding together in one cache."""

    sequences: list[_Sequence]
    kv: KVBatch


class DecodeEngine(ThreadedEngine):
    thread_label = "decode"

    def __init__(self, shared: SharedModel, limits: EngineLimits, name: str = "") -> None:
        if limits.max_running < 1:
            raise ValueError("max_running must be at least 1")
        super().__init__(shared, limits, name)
        self.max_running = limits.max_running
        self._waiting: deque[Job] = deque()
        self._ready: deque[_Sequence] = deque()  # admitted requests' sequences not yet started
        self._batches: dict[Hashable, _Batch] = {}
        self._last_only = accepts_logits_to_keep(shared.model)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while self._take_arrivals():
            try:
                self._admit()
                for key in list(self._batches):
                    self._step(key)
            except BaseException as exc:  # never let the thread die with requests waiting
                log.exception("decode loop of %s failed", self._name)
                self._fail_all(exc)
        self._fail_all(ModelLoadError(UNLOADED))

    def _busy(self) -> bool:
        return bool(self._batches or self._ready or self._waiting)

    def _take_arrivals(self) -> bool:
        """Move what arrived into the engine; blocks while there is nothing to do. False
        once the engine is closed."""
        block = not self._busy()
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if item is None:
                return False
            if isinstance(item, Job):
                self._waiting.append(item)
                continue
            try:
                item()  # between steps: no forward is running
            except Exception:
                log.exception("work on %s's thread failed", self._name)

    # -- admitting ----------------------------------------------------------------------------

    def _admit(self) -> None:
        free = self.max_running - self._running
        while self._waiting and len(self._ready) < free:
            self._start(self._waiting.popleft())
        newcomers: list[_Sequence] = []
        width = 0
        while self._ready and len(newcomers) < free:
            candidate = self._ready[0]
            if candidate.job.future.done():  # failed, or its waiter gave up
                self._ready.popleft()
                continue
            if candidate.job.cancelled:
                # never started: it counts as finished with nothing, so that a request whose
                # other inputs already run still settles (and releases its model)
                self._settle(self._ready.popleft())
                continue
            wider = max(width, len(candidate.prompt))
            if newcomers and wider * (len(newcomers) + 1) > PREFILL_TOKEN_BUDGET:
                break
            newcomers.append(self._ready.popleft())
            width = wider
        groups: dict[Hashable, list[_Sequence]] = {}
        for sequence in newcomers:
            groups.setdefault(self._batch_key(sequence), []).append(sequence)
        for key, sequences in groups.items():
            self._prefill(key, sequences)

    def _start(self, job: Job) -> None:
        """A waiting request leaves the queue: tokenized, its sequences ready to prefill."""
        self.admission.leave()
        if job.cancelled:
            job.future.cancel()
            return
        try:
            prepare(job)
        except Exception as exc:
            job.fail(exc)
            return
        assert job.rows is not None and job.options is not None
        options = job.options
        tokenizer = job.model.tokenizer
        eos = eos_ids(self.shared.model, tokenizer)
        assert job.grammars is not None and job.tool_formats is not None
        count = len(job.rows) * options.n
        request = _Request(job, [None] * count, count)
        for index in range(count):
            # an input's n sequences are consecutive rows, each with its own random stream
            item = index // options.n
            fmt = job.tool_formats[item]
            watch = None
            if job.emit is not None or options.stop:
                watch = TextWatch(
                    tokenizer,
                    eos,
                    options.stop,
                    job.emit,
                    index=index if options.n > 1 else None,
                    logprobs=options.logprobs,
                    streamable=fmt.streamable if fmt is not None else None,
                )
            grammar = job.grammars[item]
            self._ready.append(
                _Sequence(
                    request=request,
                    index=index,
                    prompt=job.rows[item],
                    options=options,
                    sampling=row_sampling(options, index),
                    adapter=job.model.adapter_name,
                    eos=frozenset(eos),
                    watch=watch,
                    constraint=RowConstraint(grammar) if grammar is not None else None,
                    tool_format=fmt,
                )
            )

    def _batch_key(self, sequence: _Sequence) -> Hashable:
        # one batch for every adapter when peft can mix them in a forward, else one each
        return "mixed" if self.shared.mixes_adapters else ("adapter", sequence.adapter)

    def _prefill(self, key: Hashable, sequences: list[_Sequence]) -> None:
        pad_id = _pad_id(self.shared, sequences[0])
        # the n sequences of one input share a prompt: prefill it once and copy its row
        firsts: dict[tuple[int, int], int] = {}
        rows = [
            firsts.setdefault((id(s.request), s.index // s.options.n), len(firsts))
            for s in sequences
        ]
        unique = [sequences[rows.index(i)] for i in range(len(firsts))]
        try:
            with self.shared.running([s.adapter for s in unique]) as (module, extra):
                kv, logits = prefill(
                    module,
                    [s.prompt for s in unique],
                    pad_id,
                    self.shared.device,
                    extra,
                    last_only=self._last_only,
                )
            if len(unique) < len(sequences):
                kv = keep(kv, rows)
                logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
            picks = _pick(logits, sequences)
        except BaseException as exc:
            self._fail(sequences, exc)
            return
        self._note(len(sequences))
        for sequence, (token, logprob) in zip(sequences, picks, strict=True):
            sequence.add(token, logprob)
        running = self._batches.get(key)
        if running is None:
            self._batches[key] = _Batch(sequences, kv)
        else:
            running.kv = join(running.kv, kv)
            running.sequences += sequences
        self._running += len(sequences)
        self._retire(key)

    # -- decoding -----------------------------------------------------------------------------

    def _step(self, key: Hashable) -> None:
        batch = self._batches[key]
        for sequence in batch.sequences:
            if sequence.job.cancelled or sequence.job.future.done():
                sequence.done = True
        self._retire(key)
        if key not in self._batches:
            return
        batch = self._batches[key]
        sequences = batch.sequences
        try:
            with self.shared.running([s.adapter for s in sequences]) as (module, extra):
                logits = decode(module, batch.kv, [s.tokens[-1] for s in sequences], extra)
            picks = _pick(logits, sequences)
        except BaseException as exc:
            del self._batches[key]
            self._running -= len(sequences)
            self._fail(sequences, exc)
            return
        self._note(len(sequences))
        for sequence, (token, logprob) in zip(sequences, picks, strict=True):
            sequence.add(token, logprob)
        self._retire(key)

    def _retire(self, key: Hashable) -> None:
        """Take the finished sequences out of the batch and settle their requests."""
        batch = self._batches[key]
        finished = [s for s in batch.sequences if s.done]
        if not finished:
            return
        kept = [i for i, s in enumerate(batch.sequences) if not s.done]
        if kept:
            batch.kv = keep(batch.kv, kept)
            batch.sequences = [batch.sequences[i] for i in kept]
        else:
            del self._batches[key]
        self._running -= len(finished)
        for sequence in finished:
            self._settle(sequence)

    def _settle(self, sequence: _Sequence) -> None:
        job = sequence.job
        if job.future.done():
            return
        tokenizer = job.model.tokenizer
        result = finish(
            tokenizer, sequence.tokens, len(sequence.prompt), list(sequence.eos), sequence.options
        )
        if sequence.options.logprobs:
            kept = _tokens_in(tokenizer, sequence, result["text"])
            result["logprobs"] = public(sequence.logprobs[:kept], tokenizer)
        if sequence.tool_format is not None:
            content, calls = sequence.tool_format.parse(result["text"])
            if calls:
                result["text"] = content
                result["tool_calls"] = [c.to_dict() for c in calls]
                result["finish_reason"] = "tool_calls"
        if sequence.watch is not None:
            sequence.watch.finish(result["text"], result.get("logprobs"))
        request = sequence.request
        request.results[sequence.index] = result
        request.left -= 1
        if request.left == 0:
            job.resolve(list(request.results))

    def _note(self, rows: int) -> None:
        self.steps += 1
        self.rows += rows
        self.largest_batch = max(self.largest_batch, rows)

    # -- failing ------------------------------------------------------------------------------

    def _fail(self, sequences: list[_Sequence], error: BaseException) -> None:
        """Fail the requests of these sequences; their other sequences retire at the next
        step (their future is done)."""
        if not isinstance(error, Exception):
            raise error
        log.warning("generation on %s failed: %s", self._name, error)
        for sequence in sequences:
            sequence.job.fail(error)

    def _fail_all(self, error: BaseException) -> None:
        jobs = [s.job for b in self._batches.values() for s in b.sequences]
        jobs += [s.job for s in self._ready]
        self._batches.clear()
        self._ready.clear()
        self._running = 0
        waiting = list(self._waiting)
        self._waiting.clear()
        while self._closed:  # nothing will take what is still in the inbox either
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Job):
                waiting.append(item)
        self.admission.leave(len(waiting))
        for job in [*jobs, *waiting]:
            job.fail(error if isinstance(error, Exception) else ModelLoadError(UNLOADED))


def _pick(
    logits: torch.Tensor, sequences: list[_Sequence]
) -> list[tuple[int, TokenLogprob | None]]:
    """Each row's next token (under its grammar, if it has one) and, when asked for, its
    log probabilities under the model's own distribution."""
    raw = logits.float()
    allowed = mask(raw, [s.constraint for s in sequences])
    tokens = next_tokens(allowed, [s.sampling for s in sequences])
    wanted = [i for i, s in enumerate(sequences) if s.options.logprobs]
    found: dict[int, TokenLogprob] = {}
    if wanted:
        tops = [sequences[i].options.top_logprobs for i in wanted]
        found = dict(zip(wanted, row_logprobs(raw, wanted, tokens, tops), strict=True))
    return [(token, found.get(i)) for i, token in enumerate(tokens)]


def _tokens_in(tokenizer: Any, sequence: _Sequence, text: str) -> int:
    """How many of the sequence's scored tokens produced the final text: all, unless a stop
    string cut it, then those that began before the cut."""
    scored = len(sequence.logprobs)
    produced = [t for t in sequence.tokens[:scored] if t not in sequence.eos]
    if not sequence.options.stop:
        return len(produced)
    low, high = 0, len(produced)  # the fewest tokens whose text reaches len(text)
    while low < high:
        middle = (low + high) // 2
        if len(tokenizer.decode(produced[:middle], skip_special_tokens=True)) >= len(text):
            high = middle
        else:
            low = middle + 1
    return low


def _pad_id(shared: SharedModel, sequence: _Sequence) -> int:
    tokenizer_pad = sequence.job.model.tokenizer.pad_token_id
    if isinstance(tokenizer_pad, int):
        return tokenizer_pad
    configured = shared.config.pad_token_id
    return configured if isinstance(configured, int) else 0

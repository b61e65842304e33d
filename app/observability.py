"""Prometheus metrics at GET /metrics.

Measured as requests pass (a pure ASGI middleware, so streamed responses are timed to their
last byte):

- `tunery_http_request_duration_seconds{method,route,status}`: every API request, labelled
  by its route template (`/v1/fine_tuning/jobs/{job_id}`), never by the raw path.
- `tunery_inference_request_duration_seconds{route}` and `tunery_inference_batch_size{route}`:
  successful predict calls (/v1/predict, deployments' predict and the OpenAI-style
  completions), with the number of inputs each carried.

Read at scrape time, so every API replica reports the same truth:

- `tunery_jobs{status}` and `tunery_deployments{status}`: counted in the database.
- `tunery_queue_depth{queue}`: wake-ups waiting in the broker (Redis list length, or the files
  in the filesystem broker's folder).
- `tunery_training_progress_ratio`, `tunery_training_steps_per_second`,
  `tunery_training_tokens_per_second` (labels `job_id`, `model`): each running job, from its
  progress and its newest training log; `tunery_trained_tokens_total`: all succeeded jobs.
- `tunery_inference_*`: what the inference server reports on /internal/models (loaded
  models, their memory and requests served, batches where it counts them).
- `tunery_gpu_memory_used_bytes` / `_total_bytes` / `tunery_gpu_utilization_ratio{gpu,name}`:
  from `nvidia-smi` when the API's host has one (the API never imports torch).
- `tunery_up{component}`: 1 when the database, broker and inference server answered.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import state
from app.settings import Settings
from app.tables import DeploymentRow, JobMetricRow, JobRow

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# every status of the state machine is reported, zero or not, so that dashboards see it
JOB_STATUSES = tuple(state.ALLOWED)
DEPLOYMENT_STATUSES = ("loading", "ready", "failed")
# the predict routes whose inputs are counted: path -> how to count them from the JSON body
PREDICT_ROUTES = re.compile(
    r"^/v1/(predict|deployments/[^/]+/predict|completions|chat/completions)$"
)
MAX_BODY_SEEN = 4 * 1024 * 1024  # larger bodies are timed but not counted
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# kombu's Redis transport keeps priorities 3, 6 and 9 in lists beside the queue's own
REDIS_PRIORITY_SEPARATOR = "\x06\x16"
REDIS_PRIORITY_STEPS = (3, 6, 9)
# a key `tokens` per second appears in training logs from workers that measure it
TOKEN_RATE_KEYS = ("tokens_per_second", "train_tokens_per_second")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.http_latency = Histogram(
            "tunery_http_request_duration_seconds",
            "API request latency, by route template.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "tunery_inference_request_duration_seconds",
            "Latency of successful predict calls at the API (model loading included).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "tunery_inference_batch_size",
            "Inputs per successful predict call.",
            ["route"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body: list[bytes] | None = [] if PREDICT_ROUTES.match(scope.get("path", "")) else None
        seen = 0

        async def receive_counting() -> Message:
            nonlocal body, seen
            message = await receive()
            if body is not None and message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > MAX_BODY_SEEN:
                    body = None
                else:
                    body.append(chunk)
            return message

        async def send_noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive_counting, send_noting)
        finally:
            elapsed = time.perf_counter() - started
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "<unmatched>"
            self.metrics.http_latency.labels(scope.get("method", "?"), route, str(status)).observe(
                elapsed
            )
            if body is not None and 200 <= status < 300:
                self.metrics.inference_latency.labels(route).observe(elapsed)
                inputs = _inputs_in(b"".join(body))
                if inputs is not None:
                    self.metrics.batch_size.labels(route).observe(inputs)


def _inputs_in(raw: bytes) -> int | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("inputs"), list):  # predict, with or without a deployment
        return len(payload["inputs"])
    if "messages" in payload:  # chat completions: one conversation
        return 1
    prompt = payload.get("prompt")  # completions: a string or a list of them
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1 if prompt is not None else None


class StateCollector(Collector):
    """Gauges read from the database, the broker, the inference server and the GPUs."""

    def __init__(
        self,
        make_session: sessionmaker[Session],
        settings: Settings,
        inference_url: Callable[[], str],
    ) -> None:
        self.make_session = make_session
        self.settings = settings
        self.inference_url = inference_url
        self.gpus = GpuProbe()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tunery_up", "Whether a component answered this scrape.", labels=["component"]
        )
        for component, probe in (
            ("database", self._database),
            ("broker", self._queue),
            ("inference", self._inference),
        ):
            try:
                yield from probe()
                up.add_metric([component], 1)
            except Exception as exc:
                log.debug("metrics: %s unreachable: %s", component, exc)
                up.add_metric([component], 0)
        yield up
        yield from self.gpus.collect()

    def _database(self) -> Iterable[Metric]:
        with self.make_session() as session:
            jobs = dict(
                session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
            )
            deployments = dict(
                session.execute(
                    select(DeploymentRow.status, func.count())
                    .where(DeploymentRow.deleted.is_(False))
                    .group_by(DeploymentRow.status)
                ).all()
            )
            tokens = session.scalar(
                select(func.coalesce(func.sum(JobRow.trained_tokens), 0)).where(
                    JobRow.status == "succeeded"
                )
            )
            running = list(session.scalars(select(JobRow).where(JobRow.status == "running")))
            latest_logs = {row.id: _latest_train_log(session, row.id) for row in running}
        metrics: list[Metric] = []
        by_status = GaugeMetricFamily(
            "tunery_jobs", "Fine-tuning jobs by status.", labels=["status"]
        )
        for status in sorted(set(JOB_STATUSES) | set(jobs)):
            by_status.add_metric([status], int(jobs.get(status, 0)))
        metrics.append(by_status)
        deps = GaugeMetricFamily("tunery_deployments", "Deployments by status.", labels=["status"])
        for status in sorted(set(DEPLOYMENT_STATUSES) | set(deployments)):
            deps.add_metric([status], int(deployments.get(status, 0)))
        metrics.append(deps)
        metrics.append(
            CounterMetricFamily(
                "tunery_trained_tokens",
                "Tokens trained on by every succeeded job (rate() of it is the throughput).",
                value=int(tokens or 0),
            )
        )
        labels = ["job_id", "model"]
        progress = GaugeMetricFamily(
            "tunery_training_progress_ratio",
            "Steps done / total steps of a running job.",
            labels=labels,
        )
        steps = GaugeMetricFamily(
            "tunery_training_steps_per_second",
            "Optimizer steps per second of a running job.",
            labels=labels,
        )
        token_rate = GaugeMetricFamily(
            "tunery_training_tokens_per_second",
            "Training throughput of a running job, from its newest training log.",
            labels=labels,
        )
        now = time.time()
        for row in running:
            step = (row.progress or {}).get("step")
            total = (row.progress or {}).get("total_steps")
            if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
                progress.add_metric([row.id, row.model], min(1.0, step / total))
            if isinstance(step, int | float) and row.started_at and now > row.started_at:
                steps.add_metric([row.id, row.model], step / (now - row.started_at))
            rate = _token_rate(latest_logs.get(row.id))
            if rate is not None:
                token_rate.add_metric([row.id, row.model], rate)
        metrics += [progress, steps, token_rate]
        return metrics

    def _queue(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "tunery_queue_depth", "Job wake-ups waiting in the broker.", labels=["queue"]
        )
        queue = self.settings.queue
        url = self.settings.broker_url
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            try:
                names = [queue] + [
                    f"{queue}{REDIS_PRIORITY_SEPARATOR}{p}" for p in REDIS_PRIORITY_STEPS
                ]
                depth.add_metric([queue], sum(int(client.llen(name)) for name in names))
            finally:
                client.close()
        elif url.startswith("filesystem"):
            folder = self.settings.broker_dir / "queue"
            count = sum(1 for _ in folder.glob(f"*.{queue}.msg")) if folder.is_dir() else 0
            depth.add_metric([queue], count)
        else:
            return []
        return [depth]

    def _inference(self) -> Iterable[Metric]:
        response = httpx.get(f"{self.inference_url().rstrip('/')}/internal/models", timeout=2.0)
        response.raise_for_status()
        body = response.json()
        models = body.get("models") or []
        metrics: list[Metric] = [
            GaugeMetricFamily(
                "tunery_inference_models_loaded",
                "Models loaded on the inference server.",
                value=len(models),
            ),
            GaugeMetricFamily(
                "tunery_inference_memory_bytes",
                "Memory of everything the inference server has loaded (GPU memory on a GPU).",
                value=float(body.get("memory_bytes") or 0),
            ),
        ]
        memory = GaugeMetricFamily(
            "tunery_inference_model_memory_bytes", "Memory of one loaded model.", labels=["model"]
        )
        served = CounterMetricFamily(
            "tunery_inference_model_requests",
            "Predict requests a loaded model has served since it was loaded.",
            labels=["model"],
        )
        for model in models:
            key = str(model.get("key"))
            memory.add_metric([key], float(model.get("memory_bytes") or 0))
            served.add_metric([key], float(model.get("requests_served") or 0))
        metrics += [memory, served]
        # batches formed by the server's micro-batcher, where it reports them
        batches = CounterMetricFamily(
            "tunery_inference_batches", "Forward passes run, by base model.", labels=["base"]
        )
        largest = GaugeMetricFamily(
            "tunery_inference_largest_batch", "Largest batch run, by base model.", labels=["base"]
        )
        for base in body.get("bases") or []:
            if isinstance(base.get("batches"), int | float):
                batches.add_metric([str(base.get("key"))], float(base["batches"]))
            if isinstance(base.get("largest_batch"), int | float):
                largest.add_metric([str(base.get("key"))], float(base["largest_batch"]))
        if batches.samples:
            metrics.append(batches)
        if largest.samples:
            metrics.append(largest)
        if isinstance(body.get("max_batch_size"), int | float):
            metrics.append(
                GaugeMetricFamily(
                    "tunery_inference_max_batch_size",
                    "Most inputs the inference server runs in one forward.",
                    value=float(body["max_batch_size"]),
                )
            )
        return metrics


def _latest_train_log(session: Session, job_id: str) -> dict[str, Any] | None:
    values = session.scalar(
        select(JobMetricRow.values)
        .where(JobMetricRow.job_id == job_id, JobMetricRow.kind == "train")
        .order_by(JobMetricRow.seq.desc())
        .limit(1)
    )
    return values if isinstance(values, dict) else None


def _token_rate(values: dict[str, Any] | None) -> float | None:
    for key in TOKEN_RATE_KEYS:
        value = (values or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class GpuProbe:
    """GPU memory and utilisation from nvidia-smi, read at most every few seconds."""

    QUERY = "index,name,memory.used,memory.total,utilization.gpu"
    MAX_AGE_SECONDS = 5.0

    def __init__(self) -> None:
        self.binary = shutil.which("nvidia-smi")
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._rows: list[list[str]] = []

    def rows(self) -> list[list[str]]:
        if self.binary is None:
            return []
        with self._lock:
            if time.monotonic() - self._read_at > self.MAX_AGE_SECONDS:
                self._read_at = time.monotonic()
                try:
                    out = subprocess.run(
                        [self.binary, f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits"],
                        capture_output=True,
                        text=True,
                        timeout=5,
                        check=True,
                    ).stdout
                    self._rows = parse_nvidia_smi(out)
                except (OSError, subprocess.SubprocessError) as exc:
                    log.debug("nvidia-smi failed: %s", exc)
                    self._rows = []
            return self._rows

    def collect(self) -> Iterator[Metric]:
        rows = self.rows()
        if not rows:
            return
        labels = ["gpu", "name"]
        used = GaugeMetricFamily(
            "tunery_gpu_memory_used_bytes", "GPU memory in use.", labels=labels
        )
        total = GaugeMetricFamily(
            "tunery_gpu_memory_total_bytes", "GPU memory in all.", labels=labels
        )
        busy = GaugeMetricFamily(
            "tunery_gpu_utilization_ratio", "GPU busy fraction.", labels=labels
        )
        for index, name, mem_used, mem_total, util in rows:
            for family, raw, scale in (
                (used, mem_used, 1024 * 1024),
                (total, mem_total, 1024 * 1024),
                (busy, util, 0.01),
            ):
                try:
                    family.add_metric([index, name], float(raw) * scale)
                except ValueError:  # "[N/A]" on some devices
                    continue
        yield used
        yield total
        yield busy


def parse_nvidia_smi(text: str) -> list[list[str]]:
    """Rows of `index, name, memory.used MiB, memory.total MiB, utilization %`."""
    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            rows.append(parts)
    return rows


def install_metrics(app: FastAPI) -> Metrics:
    """The middleware and GET /metrics; the app's state must hold settings, sessionmaker and
    inference (create_app sets them)."""
    metrics = Metrics()
    metrics.registry.register(
        StateCollector(
            app.state.sessionmaker,
            app.state.settings,
            lambda: str(getattr(app.state.inference, "base_url", app.state.settings.inference_url)),
        )
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics

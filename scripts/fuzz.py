"""A fresh-seed hunt for server errors: schemathesis on every operation of the OpenAPI schema,
all phases, on both backends. CI's run (tests/app/test_schema_fuzz.py) draws the same examples
every time; this one draws new ones, and says how to replay what it finds.

    make fuzz [FUZZ_EXAMPLES=100] [FUZZ_SEED=N] [FUZZ_BACKENDS=sqlite,postgres]
    python scripts/fuzz.py [--examples 100] [--seed N] [--backends sqlite,postgres]

- sqlite, in process: tests/app/test_schema_fuzz.py with TUNERY_FUZZ_EXAMPLES=N and
  `--hypothesis-seed SEED`: every operation's coverage and fuzzing cases (half grounded on
  real ids) and the stateful scenarios along the schema's links.
- postgres, over HTTP: `tunery api` on a fresh Postgres database with Redis as the broker (as
  deployed; the filesystem broker when Redis is not there), an API key, no rate limit, no
  inference server (predict answers 503), seeded with processed files, a queued job, a
  deployment and an evaluation; then `st run` with every phase (examples, coverage, fuzzing,
  stateful), N examples per operation and `--seed SEED`. Half the id and model fields take a
  seeded value (schemathesis dictionaries), so cases get past the lookups into the rules.

It prints the seed first, then what ran (operations, test cases, phases, seconds), and for each
failure a command that replays it. Reports land in test-artifacts/fuzz/SEED/. It exits 1 when
anything failed, 2 when a backend could not be run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PHASES = "examples,coverage,fuzzing,stateful"
ROWS = "".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(12))
PROMPTS = "".join(
    json.dumps({"prompt": f"question {i}", "completion": f" answer {i}"}) + "\n" for i in range(12)
)


@dataclass
class Result:
    backend: str
    seconds: float
    tried: str
    failures: list[str] = field(default_factory=list)  # one line each
    replays: list[str] = field(default_factory=list)  # one command each
    broken: str | None = None  # the backend could not be run


def python() -> str:
    return sys.executable


# --- SQLite, in process ---------------------------------------------------------------


def run_sqlite(examples: int, seed: int, out: Path) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "sqlite-junit.xml"
    test = "tests/app/test_schema_fuzz.py"
    command = [
        python(),
        "-m",
        "pytest",
        test,
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
        f"--hypothesis-seed={seed}",
        f"--junitxml={junit}",
    ]
    env = {**os.environ, "TUNERY_FUZZ_EXAMPLES": str(examples), "PYTHONPATH": str(ROOT)}
    print(f"== sqlite, in process: {shlex.join(command[2:])}", flush=True)
    started = time.monotonic()
    log = out / "sqlite.log"
    code = _tee(command, env, log, cwd=ROOT)
    seconds = time.monotonic() - started
    if not junit.exists():
        return Result("sqlite", seconds, "", broken=f"pytest exited {code}; see {log}")
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    operations = sum(c.get("name", "").startswith("test_no_server_errors") for c in cases)
    result = Result(
        "sqlite",
        seconds,
        f"{operations} operations x up to {examples} examples (explicit, coverage, fuzzing), "
        f"{examples} stateful scenarios of up to 6 calls",
    )
    for case in failed:
        name = case.get("name", "?")
        verdict = case.find("failure")
        if verdict is None:
            verdict = case.find("error")
        message = verdict.get("message", "") if verdict is not None else ""
        result.failures.append(f"{name}: {message.splitlines()[0] if message else 'failed'}")
        replay = [*command[:3], f"{test}::{name}", *command[4:-1]]
        result.replays.append(
            f"TUNERY_FUZZ_EXAMPLES={examples} {shlex.join(replay)}   "
            f"(the curl in {log.relative_to(ROOT)} replays one request against any API)"
        )
    return result


# --- Postgres, over HTTP ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"tunery_fuzz_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def redis_reachable(url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except Exception:
        return False


@contextmanager
def live_api(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    subprocess.run(
        [python(), "-m", "app.cli", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [python(), "-m", "app.cli", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tunery api exited {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tunery api did not answer in 60 s; see {log}")
            time.sleep(0.3)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def seed_objects(base: str, key: str, env: dict[str, str]) -> dict[str, list[str]]:
    """Real objects for half of the cases' ids, by schemathesis dictionary name."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:

        def ok(response: httpx.Response) -> dict[str, Any]:
            if response.status_code != 200:
                raise RuntimeError(f"seeding: {response.request.url} {response.text}")
            body: dict[str, Any] = response.json()
            return body

        files = [
            ok(client.post("/v1/files", files={"file": (name, text.encode())}))["id"]
            for name, text in (("train.jsonl", ROWS), ("prompts.jsonl", PROMPTS))
        ]
        job = ok(
            client.post(
                "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": files[0]}
            )
        )
        deployment = ok(client.post("/v1/deployments", json={"model": "tiny-bert"}))
        evaluation = ok(
            client.post("/v1/evaluations", json={"model": "tiny-bert", "file": files[0]})
        )
    model, checkpoint = trained_objects(env, job["id"])
    return {
        "files": files,
        "jobs": [job["id"]],
        "checkpoints": [checkpoint],
        "deployments": [deployment["id"]],
        "evaluations": [evaluation["id"]],
        "models": ["tiny-bert", "tiny-llama", model],
        "tuned": [model, f"{model}:ckpt-step-1"],
        "generative": ["tiny-llama"],
    }


def trained_objects(env: dict[str, str], job_id: str) -> tuple[str, str]:
    """What a finished job leaves (a fine-tuned model and a checkpoint, each with its files
    in the store), written directly: no worker trains here. Returns their ids."""
    from app.db import session_scope
    from app.ids import new_id
    from app.settings import Settings
    from app.storage import ArtifactStore
    from app.tables import FineTunedModelRow, JobCheckpointRow, JobRow

    settings = Settings(
        data_dir=Path(env["TUNERY_DATA_DIR"]), database_url=env["TUNERY_DATABASE_URL"]
    )
    store = ArtifactStore(settings.storage_url, settings.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "adapter_config.json").write_text('{"r": 8}')
        (folder / "tunery.json").write_text('{"task": "classification", "labels": ["a", "b"]}')
        store.put_dir(folder, f"models/{job_id}/model")
        store.put_dir(folder, f"models/{job_id}/checkpoints/step-1/model")
    model = f"ft:tiny-bert::{job_id}"
    checkpoint = new_id("ftckpt")
    with session_scope(settings.database_url) as session:
        project_id = session.get(JobRow, job_id).project_id  # type: ignore[union-attr]
        session.add(
            FineTunedModelRow(
                id=model,
                project_id=project_id,
                job_id=job_id,
                base_model="tiny-bert",
                task="classification",
                training_type="lora",
                format="adapter",
                artifact_key=f"models/{job_id}/model",
            )
        )
        session.add(
            JobCheckpointRow(
                id=checkpoint,
                job_id=job_id,
                step=1,
                model_name=f"{model}:ckpt-step-1",
                metrics={},
                artifact_key=f"models/{job_id}/checkpoints/step-1/model",
            )
        )
    return model, checkpoint


# which dictionary feeds which field; each takes a seeded value in half the cases
BINDINGS = {
    "path.file_id": "files",
    "path.job_id": "jobs",
    "path.checkpoint_id": "checkpoints",
    "path.dep_id": "deployments",
    "path.evaluation_id": "evaluations",
    "path.model_id": "models",
    "body.training_file": "files",
    "body.validation_file": "files",
    "body.file": "files",
    "body.model": "models",
    "body.compare_to": "models",
    "body.from_checkpoint": "checkpoints",
}


def schemathesis_config(objects: dict[str, list[str]]) -> str:
    lines = [
        f'hooks = "{ROOT / "scripts" / "fuzz_hooks.py"}"',
        "",
        "[checks]",
        # replaced by no_server_error (scripts/fuzz_hooks.py): a 503 with Retry-After is fine
        "not_a_server_error.enabled = false",
        # a body over the upload limit (a string past maxLength) is refused with 413 unparsed
        'negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406",'
        ' "409", "413", "415", "422", "428", "429", "5xx"]',
        "",
        "[parameters]",
    ]
    lines += [
        f'"{name}" = {{ dictionary = "{d}", probability = 0.5 }}' for name, d in BINDINGS.items()
    ]
    for name, values in objects.items():
        lines += ["", f"[dictionaries.{name}]", f"values = {json.dumps(values)}"]
    # the same exceptions as tests/app/test_schema_fuzz.py::_excluded_checks, for the same reasons
    # text generation takes a causal LM: a classifier is a 400 there (model_not_generative)
    lines += [
        "",
        "[[operations]]",
        'include-path-regex = "^/v1/(chat/)?completions$"',
        'include-method = "POST"',
        'parameters."body.model" = { dictionary = "generative", probability = 0.5 }',
    ]
    # the operations on fine-tuned models only take ids matching ^ft: (app/openapi.py)
    for method, path in (
        ("DELETE", "/v1/models/{model_id}"),
        ("GET", "/v1/models/{model_id}/content"),
    ):
        lines += [
            "",
            "[[operations]]",
            f'include-path = "{path}"',
            f'include-method = "{method}"',
            'parameters."path.model_id" = { dictionary = "tuned", probability = 0.5 }',
        ]
    lines += [
        "",
        "[[operations]]",
        'include-path = "/v1/files"',
        'include-method = "POST"',
        "checks.negative_data_rejection.enabled = false",
        "",
        "[[operations]]",
        'include-path = "/v1/models/{model_id}/content"',
        "checks.unsupported_method.enabled = false",
    ]
    return "\n".join(lines) + "\n"


def run_postgres(examples: int, seed: int, out: Path, server_url: str, redis_url: str) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    from tests.support.models import build_tiny_bert, build_tiny_llama

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="tunery-fuzz-") as scratch,
        postgres_database(server_url) as database_url,
    ):
        data = Path(scratch)
        build_tiny_llama(data / "models" / "tiny-llama")
        build_tiny_bert(data / "models" / "tiny-bert")
        queue = f"tunery-fuzz-{secrets.token_hex(4)}"
        use_redis = redis_reachable(redis_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
        env.update(
            PYTHONPATH=str(ROOT),
            HF_HUB_OFFLINE="1",
            TUNERY_DATA_DIR=str(data / "data"),
            TUNERY_MODELS_DIR=str(data / "models"),
            TUNERY_DATABASE_URL=database_url,
            TUNERY_QUEUE=queue,
            TUNERY_RATE_LIMIT_PER_MINUTE="0",
            # every job stays queued (no worker): the quota would answer 429 after four
            TUNERY_QUOTA_CONCURRENT_JOBS="1000000",
            TUNERY_INFERENCE_URL=f"http://127.0.0.1:{free_port()}",
            TUNERY_MAX_UPLOAD_BYTES=str(1024 * 1024),
        )
        if use_redis:
            env["TUNERY_BROKER_URL"] = redis_url
        created = subprocess.run(
            [python(), "-m", "app.cli", "keys", "create", "--project", "fuzz"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        try:
            with live_api(env, out / "api.log") as base:
                config = out / "schemathesis.toml"
                config.write_text(schemathesis_config(seed_objects(base, key, env)))
                command = [
                    str(Path(python()).parent / "st"),
                    "--config-file",
                    str(config),
                    "run",
                    f"{base}/openapi.json",
                    "--seed",
                    str(seed),
                    "--max-examples",
                    str(examples),
                    "--phases",
                    PHASES,
                    # one worker: hypothesis's lambda descriptions are not thread-safe on
                    # Python 3.11 ("AST constructor recursion depth mismatch")
                    "--workers",
                    "1",
                    "--exclude-checks",
                    "positive_data_acceptance",
                    "--report",
                    "json",
                    "--report-dir",
                    str(out),
                    "--no-color",
                ]
                shown = shlex.join(command[1:])
                print(
                    f"== postgres{' + redis' if use_redis else ''}, over HTTP: st {shown}",
                    flush=True,
                )
                _tee([*command, "-H", f"Authorization: Bearer {key}"], env, out / "st.log", cwd=out)
        finally:
            if use_redis:
                _forget_queue(redis_url, queue)
    return _postgres_result(out, examples, time.monotonic() - started)


def _forget_queue(redis_url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    keys = [*client.scan_iter(f"*{queue}*")]
    if keys:
        client.delete(*keys)


def _postgres_result(out: Path, examples: int, seconds: float) -> Result:
    reports = sorted(out.glob("json-*.json"))
    if not reports:
        return Result("postgres", seconds, "", broken=f"st wrote no report; see {out / 'st.log'}")
    report = json.loads(reports[-1].read_text())
    phases = ", ".join(f"{name} {p['status']}" for name, p in report["phases"].items())
    tried = (
        f"{report['operations']['tested']} operations, {report['test_cases']['generated']} test "
        f"cases ({examples} examples per operation and phase), phases: {phases}"
    )
    warnings = {name: ops for name, ops in report["warnings"].items() if ops}
    if warnings:
        tried += "; warnings: " + "; ".join(f"{n} ({len(o)})" for n, o in warnings.items())
    result = Result("postgres", seconds, tried)
    for group in report["failures"]:
        result.failures.append(
            f"{group['code']} {group['title']} x{group['count']}: {', '.join(group['operations'])}"
        )
    for error in report["errors"]:
        result.failures.append(f"error: {error['title']} x{error['count']}")
    for crash in sorted(out.glob(".schemathesis/*/cache/crashes/*.json")):
        entry = json.loads(crash.read_text())
        if "code_sample" in entry:
            result.replays.append(
                f"{entry.get('operation')}: {entry['code_sample']}  (add -H 'Authorization: "
                f"Bearer <key>' against any tunery api; or `st replay {crash.parent}`)"
            )
    return result


# --- the run ----------------------------------------------------------------------------


def _tee(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> int:
    """Run, showing the output and keeping it in `log`."""
    with log.open("w") as kept:
        proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            kept.write(line)
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=int(os.environ.get("FUZZ_EXAMPLES") or 100))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--backends", default=os.environ.get("FUZZ_BACKENDS") or "sqlite,postgres")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TUNERY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="any database on the server to use (it must allow CREATE DATABASE)",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("TUNERY_TEST_REDIS", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    env_seed = os.environ.get("FUZZ_SEED")
    seed = (
        args.seed
        if args.seed is not None
        else int(env_seed)
        if env_seed
        else random.randrange(2**31)
    )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    out = ROOT / "test-artifacts" / "fuzz" / str(seed)
    print(
        f"fuzz: seed {seed}, {args.examples} examples per operation, backends {', '.join(backends)}"
    )
    print(f"fuzz: run it again with: make fuzz FUZZ_SEED={seed} FUZZ_EXAMPLES={args.examples}")
    print(f"fuzz: reports in {out.relative_to(ROOT)}/", flush=True)
    results = []
    for backend in backends:
        if backend == "sqlite":
            results.append(run_sqlite(args.examples, seed, out))
        elif backend == "postgres":
            try:
                results.append(
                    run_postgres(args.examples, seed, out, args.postgres_url, args.redis_url)
                )
            except Exception as exc:  # the database or the API could not be started
                results.append(Result("postgres", 0.0, "", broken=f"{type(exc).__name__}: {exc}"))
        else:
            parser.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
    print(f"\n===== fuzz summary: seed {seed}, {args.examples} examples per operation")
    for result in results:
        state = "BROKEN" if result.broken else f"{len(result.failures)} failure(s)"
        what = result.tried or result.broken
        print(f"-- {result.backend}: {state} in {result.seconds:.0f} s; {what}")
        for line in result.failures:
            print(f"   failure: {line}")
        for line in result.replays:
            print(f"   replay: {line}")
    if any(r.broken for r in results):
        return 2
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

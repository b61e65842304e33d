"""The evaluation runner's child process against a live worker: a worker killed with SIGKILL
mid-evaluation takes its evaluation child with it (app/processes.py arms the parent-death
signal), rather than leave it scoring, and holding a model in memory, for nobody."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.test_processes import running
from tests.support import live
from tests.support.data import sentiment_rows, write_jsonl
from tests.support.faults import upload

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def evaluation_children(data_dir: Path) -> Iterator[tuple[int, Path]]:
    """(pid, spec path) of the evaluation children working under data_dir."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()
        except OSError:
            continue
        if b"worker.evaluation.run" in command and str(data_dir).encode() in command[-1]:
            yield int(entry.name), Path(command[-1].decode())


def test_a_sigkilled_worker_takes_its_evaluation_child_along(
    tmp_path: Path, tiny_models: Path
) -> None:
    data_dir = tmp_path / "data"
    with live.api_only(data_dir, tiny_models) as server, server.client() as client:
        server.start("worker", ["worker", "--loglevel", "INFO"])
        # enough rows that scoring outlasts the kill by far
        rows = write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(20000))
        file_id = upload(client, rows)
        created = client.post("/v1/evaluations", json={"model": "tiny-bert", "file": file_id})
        assert created.status_code == 200, created.text

        deadline = time.monotonic() + 120
        found: list[tuple[int, Path]] = []
        while not found:
            assert time.monotonic() < deadline, f"no evaluation child\n{server.log_tail()}"
            time.sleep(0.05)
            found = list(evaluation_children(data_dir))
        ((child, spec_path),) = found

        server.kill("worker")  # SIGKILL to the worker's process group; the child has its own
        gone_by = time.monotonic() + 10
        while running(child) and time.monotonic() < gone_by:
            time.sleep(0.05)
        if running(child):
            os.kill(child, signal.SIGKILL)  # not left behind by a failing test
            pytest.fail("the evaluation child outlived its worker")
        # it was killed, not left to finish: it never wrote its result
        result_path = Path(json.loads(spec_path.read_text())["result_path"])
        assert not result_path.exists()
        evaluation = client.get(f"/v1/evaluations/{created.json()['id']}")
        assert evaluation.json()["status"] == "running"  # until its lease lapses

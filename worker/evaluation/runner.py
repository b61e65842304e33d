"""Runs one evaluation for the Celery task: claim, start the child, keep the lease, record.

Torch-free: the scoring happens in `python -m worker.evaluation.run` (a child process of
its own, for the reasons given there). Safe to run twice: the claim is a conditional
UPDATE, and a runner that lost its lease stops its child and records nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import processes
from app.evaluations import repository
from app.failures import APIError
from app.files import repository as files_repo
from app.models.service import serving_spec
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import EvaluationRow
from app.zygote import Program
from worker import starts
from worker.supervisor import worker_identity

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 5.0


class _Failed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


class EvaluationRunner:
    def __init__(
        self,
        settings: Settings,
        make_session: sessionmaker[Session],
        store: ArtifactStore,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.make_session = make_session
        self.store = store
        self.owner = owner or worker_identity()

    def run(self, evaluation_id: str) -> str:
        """Claim and run an evaluation; returns what happened (for logs and tests)."""
        lease = self.settings.lease_seconds
        with self.make_session() as session:
            attempt = repository.claim(session, evaluation_id, self.owner, lease)
            session.commit()
            if attempt is None:
                return "not-claimed"
            row = session.get(EvaluationRow, evaluation_id)
            assert row is not None
            work = self.settings.work_dir / "evaluations" / evaluation_id / f"attempt-{attempt}"
            try:
                spec = self._spec(session, row, work)
            except _Failed as failure:
                return self._record(evaluation_id, attempt, {"error": failure.error})
        result = self._supervise(evaluation_id, attempt, spec, work)
        if result is None:
            return "lease-lost"
        return self._record(evaluation_id, attempt, result)

    def _spec(self, session: Session, row: EvaluationRow, work: Path) -> dict[str, Any]:
        try:
            model = serving_spec(session, self.settings.models_dir, row.model, param="model")
            other = None
            if row.compare_to is not None:
                other = serving_spec(
                    session, self.settings.models_dir, row.compare_to, param="compare_to"
                )
        except APIError as exc:  # deleted, or its base left TUNERY_MODELS_DIR, since create
            raise _Failed(exc.code or "model_not_found", exc.message, exc.param) from exc
        file = files_repo.get(session, row.file_id)
        if file is None:
            raise _Failed(
                "file_not_found", f"file {row.file_id} was deleted; upload it again.", "file"
            )
        work.mkdir(parents=True, exist_ok=True)
        return {
            "model": model,
            "compare_to": other,
            "file": {
                "path": str(self.store.local_file(file.storage_key)),
                "filename": file.filename,
            },
            "storage_url": self.store.url,
            "cache_dir": str(self.settings.cache_dir),
            "result_path": str(work / "result.json"),
        }

    def _supervise(
        self, evaluation_id: str, attempt: int, spec: dict[str, Any], work: Path
    ) -> dict[str, Any] | None:
        """The child's result, or None when the lease was lost (the child is stopped)."""
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        result_path = Path(spec["result_path"])
        result_path.unlink(missing_ok=True)
        # SIGKILL when the worker dies: its evaluation goes back to the queue, and a child
        # left running would hold a model in memory for nobody
        program = Program(
            "worker.evaluation.run",
            [str(spec_path)],
            env=starts.child_env(self.settings),
            cwd=work,
            log=work / "evaluation.log",
        )
        child = starts.start(self.settings, program)
        next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
        try:
            while child.poll() is None:
                time.sleep(POLL_SECONDS)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
                    with self.make_session() as session:
                        kept = repository.renew(
                            session, evaluation_id, self.owner, attempt, self.settings.lease_seconds
                        )
                        session.commit()
                    if not kept:
                        log.warning("lost the lease on %s; stopping its child", evaluation_id)
                        return None
        finally:
            processes.terminate([child], grace=TERMINATE_GRACE_SECONDS)
        if result_path.is_file():
            result: dict[str, Any] = json.loads(result_path.read_text())
            return result
        tail = processes.tail(work / "evaluation.log")
        return {
            "error": {
                "code": "evaluation_crashed",
                "message": f"The evaluation process exited with status {child.returncode} "
                f"without a result (killed for memory?). Last output: {tail}",
                "param": None,
            }
        }

    def _record(self, evaluation_id: str, attempt: int, result: dict[str, Any]) -> str:
        error = result.get("error")
        if error is not None:
            values: dict[str, Any] = {"status": "failed", "error": error}
        else:
            values = {
                "status": "succeeded",
                "error": None,
                "rows": result["rows"],
                "metrics": result["metrics"],
                "compare_metrics": result.get("compare_metrics"),
                "difference": result.get("difference"),
            }
        with self.make_session() as session:
            recorded = repository.finish(session, evaluation_id, self.owner, attempt, **values)
            session.commit()
        if not recorded:
            return "lease-lost"
        return str(values["status"])

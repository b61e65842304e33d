"""Moving an attempt's files to and from the artifact store: checkpoints handed over by the
trainer (uploaded on a thread), the trained model, and checkpoints brought back to resume or
to start from. No database here: callers never hold a session across these calls."""

from __future__ import annotations

import functools
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.storage import ArtifactStore
from worker.training.events import Checkpoint
from worker.training.layout import MODEL_DIRNAME, SKIPPED_FILES, is_trainer_state


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"models/{job_id}/checkpoints/step-{step}"


def model_key(job_id: str) -> str:
    return f"models/{job_id}/model"


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    epoch: float | None
    metrics: dict[str, Any]
    best_step: int | None
    artifact_key: str
    state_key: str


def upload_checkpoint(
    store: ArtifactStore, job_id: str, event: Checkpoint, work: Path
) -> StoredCheckpoint:
    """Upload outbox/step-N: the model files under .../model, the trainer state under
    .../trainer; then drop the outbox folder (its files are hard links)."""
    source = (work / event.dir).resolve()
    if not source.is_relative_to(work.resolve()) or not source.is_dir():
        raise ValueError(f"checkpoint folder {event.dir!r} is not in the job's work dir")
    prefix = checkpoint_prefix(job_id, event.step)
    store.delete(prefix)  # a step written again after a resume replaces the old files
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name in SKIPPED_FILES:
            continue
        part = "trainer" if is_trainer_state(path.name) else "model"
        with path.open("rb") as fh:
            store.write_stream(
                f"{prefix}/{part}/{path.relative_to(source).as_posix()}",
                iter(functools.partial(fh.read, 1 << 20), b""),
            )
    shutil.rmtree(source, ignore_errors=True)
    return StoredCheckpoint(
        step=event.step,
        epoch=event.epoch,
        metrics=dict(event.metrics),
        best_step=event.best_step,
        artifact_key=f"{prefix}/model",
        state_key=f"{prefix}/trainer",
    )


def download_tree(store: ArtifactStore, key: str, target: Path) -> int:
    """Copy the files under key into target (hard links from a local store); returns the count."""
    target.mkdir(parents=True, exist_ok=True)
    files = store.list_files(key)
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if store.is_local:
            source = store.local_file(f"{key}/{rel}")
            try:
                os.link(source, dest)
            except OSError:
                shutil.copy2(source, dest)
        else:
            with store.open_read(f"{key}/{rel}") as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return len(files)


def store_model(store: ArtifactStore, job_id: str, work: Path) -> str:
    """Upload the export (output_dir/model); returns its key."""
    key = model_key(job_id)
    store.delete(key)
    store.put_dir(work / MODEL_DIRNAME, key)
    return key


class CheckpointUploads:
    """Uploads checkpoints on a thread, in order, so the relay loop keeps the lease alive."""

    def __init__(self, store: ArtifactStore, job_id: str, work: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.work = work
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"upload-{job_id}")
        self.pending: list[tuple[int, Future[StoredCheckpoint]]] = []
        self.submitted: set[int] = set()

    def submit(self, event: Checkpoint) -> None:
        """Start the upload of a checkpoint event; once per step (the supervisor hands an
        event over again when the database refused the pass that first saw it)."""
        if event.step in self.submitted:
            return
        self.submitted.add(event.step)
        future = self.pool.submit(upload_checkpoint, self.store, self.job_id, event, self.work)
        self.pending.append((event.step, future))

    def finished(self) -> list[tuple[int, StoredCheckpoint | BaseException]]:
        """Uploads done and not yet recorded, in submission order."""
        done: list[tuple[int, StoredCheckpoint | BaseException]] = []
        for step, future in self.pending:
            if not future.done():
                break
            error = future.exception()
            done.append((step, error if error is not None else future.result()))
        return done

    def recorded(self, count: int) -> None:
        """The first `count` finished uploads are in the database: forget them."""
        del self.pending[:count]

    @property
    def idle(self) -> bool:
        return not self.pending

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

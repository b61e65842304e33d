"""The supervisor: the Celery task's body for one job (docs/internals.md, "The supervisor").
Torch-free: all ML happens in the trainer child process(es).

  runner.py    JobRunner.run: claim, prepare, supervise, record the outcome
  prepare.py   the files checked again, the worker checked, inputs fetched, the spec
  loop.py      the supervision loop: relay, lease, cancel, pause, database outages
  relay.py     events.jsonl -> the job's rows (through app/jobs/outcomes.py)
  transfer.py  checkpoints and the model to and from the artifact store
  lease.py     the lease: owned rows, heartbeats, patience with the database
  devices.py   CUDA devices, trainer processes, out-of-memory kills
  crash.py     why a trainer died without saying
"""

from __future__ import annotations

from worker.supervisor.runner import JobRunner, worker_identity

__all__ = ["JobRunner", "worker_identity"]

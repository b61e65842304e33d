"""A sweep trial pruned by its sweep stops at the evaluation that pruned it, on both
backends: the real trainer child waits after each evaluation for the verdict
(worker/training/verdict.py), its supervisor relays it (worker/supervisor/loop.py Verdicts),
and the API's driver thread judges waiting trials (app/sweeps/driver.py).

Two trials are played through the job rules with a perfect eval_loss, so the third, a real
tiny-bert that cannot match it, is pruned at its first evaluation. The verdict wait is made
long: the steps the trial trains do not depend on how fast the machine is.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.sweeps.driver import SweepDriver
from tests.app.conftest import Api, api, upload_text  # noqa: F401 - the api fixture
from tests.app.sweeps.test_sweeps_api import (
    create,
    evaluate,
    get,
    run_job,
    running_trials,
    sessions,
    succeed,
)
from tests.worker.test_supervisor import Rig, rig, sentiment_jsonl, trainer_pids  # noqa: F401
from worker.supervisor import JobRunner

pytestmark = pytest.mark.slow

LR = "method.supervised.hyperparameters.learning_rate"


def sweep_body(file_id: str) -> dict[str, Any]:
    # 120 rows, 108 train in batches of 8: 14 steps an epoch, 28 in all. The job leaves
    # evaluation to the epoch ends: its trials evaluate every 4 steps for the pruner.
    hyper = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 16}
    return {
        "job": {
            "model": "tiny-bert",
            "training_file": file_id,
            "seed": 3,
            "training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        },
        "search_space": {LR: {"type": "log_uniform", "low": 1e-4, "high": 1e-3}},
        "objective": {"metric": "eval_loss"},
        "n_trials": 3,
        "max_parallel": 1,
        "sampler": "random",
        "pruner": "median",
        "seed": 5,
    }


def test_a_pruned_trial_stops_at_the_evaluation_that_pruned_it(rig: Rig) -> None:  # noqa: F811
    service = rig.api
    file_id = str(upload_text(service, "train.jsonl", sentiment_jsonl(120))["id"])
    sweep_id = create(service, sweep_body(file_id))["id"]
    driver = SweepDriver(sessions(service), service.settings, service.enqueued.append)
    for _ in range(2):  # the median pruner's warm-up: two trials with a perfect eval_loss
        (trial,) = running_trials(get(service, sweep_id))
        run_job(service, trial["job_id"])
        evaluate(service, trial["job_id"], 4, 1.0)
        evaluate(service, trial["job_id"], 8, 1.0)
        succeed(service, trial["job_id"], 1.0)
        driver.run_once()
    (real,) = running_trials(get(service, sweep_id))
    job_id = real["job_id"]
    assert rig.job(job_id)["hyperparameters"]["eval_steps"] == 4

    runner = JobRunner(
        rig.settings.model_copy(update={"sweep_verdict_seconds": 600.0}),
        sessions(service),
        rig.store,
    )
    driver.start()
    try:
        assert runner.run(job_id) == "cancelled"
    finally:
        driver.stop()
        driver.join(30)
    job = rig.job(job_id)
    assert job["status"] == "cancelled" and not trainer_pids(job_id)
    # it stopped at its first evaluation, the one the pruner judged: not a step further
    assert job["progress"]["step"] == 4, job["progress"]
    trial = get(service, sweep_id)["trials"][2]
    assert trial["state"] == "pruned", trial
    assert [step for step, _ in trial["intermediate_values"]] == [4]
    assert trial["steps"] == 4
    messages = [event["message"] for event in rig.events(job_id)]
    assert any(m.startswith(f"Pruned by sweep {sweep_id} at step 4") for m in messages)

"""What a trial's trainer waits on: the driver finds trials with evaluations not yet judged
(repository.awaiting_judgement) and judges them at once (SweepDriver.judge_waiting); the
supervisor reads how far the sweep judged (repository.judged_step) and whether anything
judges the job at all (repository.judged_by_pruner). And trials evaluate often enough for
the pruner. Both backends; the worker's side is played through the job rules."""

from __future__ import annotations

from typing import Any

from app.sweeps import repository
from tests.app.conftest import Api
from tests.app.sweeps.test_sweeps_api import (
    body,
    create,
    driver,
    evaluate,
    get,
    run_job,
    running_trials,
    sessions,
    succeed,
)

HYPER = ("method", "supervised", "hyperparameters")


def job_of(api: Api, job_id: str) -> dict[str, Any]:
    return dict(api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json())


def with_hyperparameters(file_id: str, **hp: Any) -> dict[str, Any]:
    sweep = body(file_id, n_trials=4, max_parallel=1)
    sweep["job"]["method"] = {"type": "supervised", "supervised": {"hyperparameters": hp}}
    return sweep


def test_the_driver_judges_waiting_trials_and_the_supervisor_reads_the_verdict(
    api: Api, file_id: str
) -> None:
    sweep_id = create(api, body(file_id, n_trials=4, max_parallel=1))["id"]
    judge = driver(api)
    for accuracy in (0.8, 0.9):  # the median pruner's warm-up
        (trial,) = running_trials(get(api, sweep_id))
        run_job(api, trial["job_id"])
        with sessions(api)() as session:
            assert repository.judged_by_pruner(session, trial["job_id"])
        evaluate(api, trial["job_id"], 10, accuracy)
        with sessions(api)() as session:
            assert repository.awaiting_judgement(session) == [sweep_id]
            assert repository.judged_step(session, trial["job_id"]) == 0
        assert judge.judge_waiting() == []
        with sessions(api)() as session:
            # judged: the supervisor lets the trainer go on
            assert repository.judged_step(session, trial["job_id"]) == 10
            assert repository.awaiting_judgement(session) == []
        evaluate(api, trial["job_id"], 20, accuracy)
        succeed(api, trial["job_id"], accuracy)
        judge.run_once()
    (third,) = running_trials(get(api, sweep_id))
    run_job(api, third["job_id"])
    evaluate(api, third["job_id"], 10, 0.1)
    judge.judge_waiting()
    assert get(api, sweep_id)["trials"][2]["state"] == "pruned"
    with sessions(api)() as session:
        # nothing judges it any more; its job is cancelled in the same commit
        assert repository.judged_step(session, third["job_id"]) is None
        assert not repository.judged_by_pruner(session, third["job_id"])
    assert job_of(api, third["job_id"])["status"] == "running"  # until its worker stops it


def test_trials_without_a_pruner_are_not_judged(api: Api, file_id: str) -> None:
    sweep_id = create(api, body(file_id, n_trials=2, max_parallel=1, pruner="none"))["id"]
    (trial,) = running_trials(get(api, sweep_id))
    run_job(api, trial["job_id"])
    evaluate(api, trial["job_id"], 10, 0.5)
    with sessions(api)() as session:
        assert not repository.judged_by_pruner(session, trial["job_id"])
        assert repository.awaiting_judgement(session) == []
    assert job_of(api, trial["job_id"])["hyperparameters"]["eval_steps"] is None


def test_trials_evaluate_often_for_the_pruner_unless_the_job_says(api: Api, file_id: str) -> None:
    # 20 rows, 18 train in batches of 8: 3 steps an epoch; evaluated only at epoch ends the
    # pruner would see one value an epoch, so a trial evaluates every step
    sweep = create(api, with_hyperparameters(file_id, batch_size=8, n_epochs=4))
    (trial,) = running_trials(sweep)
    job = job_of(api, trial["job_id"])
    assert job["hyperparameters"]["eval_steps"] == 1
    assert job["method"]["supervised"]["hyperparameters"]["eval_steps"] == 1
    events = api.client.get(f"/v1/fine_tuning/jobs/{trial['job_id']}/events").json()["data"]
    assert any(e["message"].startswith("Evaluates every 1 steps") for e in events)
    for asked in (2, "epoch"):
        sweep = create(api, with_hyperparameters(file_id, batch_size=8, eval_steps=asked))
        (trial,) = running_trials(sweep)
        kept = job_of(api, trial["job_id"])["hyperparameters"]["eval_steps"]
        assert kept == (2 if asked == 2 else None)

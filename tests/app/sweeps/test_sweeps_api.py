"""Sweeps through the API on both backends: search-space validation, trials started as jobs
up to max_parallel, Optuna told each trial's end, pruning, cancel, a lost worker's trial,
and no Optuna trial left RUNNING.

The worker's side is played by the job rules a worker applies (app/jobs/state.py claim,
app/jobs/outcomes.py metrics_logged / succeeded / failed, the reconciler); the driver pass
is SweepDriver.run_once. Real trainers run in tests/e2e/test_sweeps_walk.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import outcomes, state
from app.jobs.reconciler import reconcile
from app.sweeps import study
from app.sweeps.driver import SweepDriver
from app.tables import JobRow
from tests.app.conftest import Api, app_of

CLASSIFY = "".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(20))
LR = "method.supervised.hyperparameters.learning_rate"
EPOCHS = "method.supervised.hyperparameters.n_epochs"


def sessions(api: Api) -> sessionmaker[Session]:
    makers: sessionmaker[Session] = app_of(api.client).state.sessionmaker
    return makers


def driver(api: Api) -> SweepDriver:
    return SweepDriver(sessions(api), api.settings, api.enqueued.append)


def body(file_id: str, **overrides: Any) -> dict[str, Any]:
    sweep: dict[str, Any] = {
        "job": {"model": "tiny-bert", "training_file": file_id, "seed": 3},
        "search_space": {
            LR: {"type": "log_uniform", "low": 1e-5, "high": 1e-2},
            "training_type.r": {"type": "choice", "values": [4, 8]},
        },
        "objective": {"metric": "accuracy"},
        "n_trials": 4,
        "max_parallel": 2,
        "seed": 5,
    }
    sweep.update(overrides)
    return sweep


def create(api: Api, sweep: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/v1/fine_tuning/sweeps", json=sweep)
    assert response.status_code == 200, response.text
    return dict(response.json())


def get(api: Api, sweep_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/fine_tuning/sweeps/{sweep_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def run_job(api: Api, job_id: str, owner: str = "worker-a") -> tuple[int, str]:
    with sessions(api)() as session:
        attempt = state.claim(session, job_id, owner, lease_seconds=60)
        assert attempt is not None
        row = state.owned(session, job_id, owner, attempt)
        assert row is not None
        if row.status == "validating_files":
            state.files_checked(row)
        session.commit()
    return attempt, owner


def evaluate(api: Api, job_id: str, step: int, accuracy: float, loss: float | None = None) -> None:
    with sessions(api)() as session:
        values = {"eval_loss": 1 - accuracy if loss is None else loss, "accuracy": accuracy}
        outcomes.metrics_logged(session, job_id, "eval", step, step / 10, values, values)
        row = session.get(JobRow, job_id)
        assert row is not None
        outcomes.progressed(row, step, 40, step / 10, 0, time.time())
        session.commit()


def succeed(api: Api, job_id: str, accuracy: float) -> None:
    with sessions(api)() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        outcomes.succeeded(
            session,
            row,
            artifact_key=f"models/{job_id}/model",
            model_format="adapter",
            trained_tokens=100,
            metrics={"eval_loss": 1 - accuracy, "accuracy": accuracy},
            result_step=40,
            result_reason="final",
            best_step=40,
            stopped_early=None,
        )
        session.commit()


def optuna_states(api: Api, sweep_id: str) -> list[TrialState]:
    url = study.storage_url(api.settings.database_url)
    return [t.state for t in study.load_study(url, sweep_id).get_trials(deepcopy=False)]


def running_trials(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in sweep["trials"] if t["state"] == "running"]


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "param", "says"),
    [
        (
            {
                "method.supervised.hyperparameters.learning_rte": {
                    "type": "uniform",
                    "low": 0.1,
                    "high": 0.2,
                }
            },
            "search_space.method.supervised.hyperparameters.learning_rte",
            "'learning_rte' is not a field of method.supervised.hyperparameters",
        ),
        (
            {"training_type.rank": {"type": "int", "low": 1, "high": 4}},
            "search_space.training_type.rank",
            "'rank' is not a field of training_type",
        ),
        (
            {"method.supervised": {"type": "choice", "values": [1]}},
            "search_space.method.supervised",
            "is an object; name one of its fields",
        ),
        (
            {"training_file": {"type": "choice", "values": ["file-x"]}},
            "search_space.training_file",
            "is the same for every trial",
        ),
        (
            {LR: {"type": "uniform", "low": 0.01, "high": 0.001}},
            f"search_space.{LR}",
            "low 0.01 is above high 0.001",
        ),
        (
            {LR: {"type": "log_uniform", "low": 0, "high": 0.001}},
            f"search_space.{LR}",
            "needs low > 0",
        ),
        (
            {LR: {"type": "uniform", "low": 1e-4, "high": 2.0}},
            f"search_space.{LR}",
            "the value 2.0 makes an invalid job",
        ),
        (
            {EPOCHS: {"type": "int", "low": 1, "high": 6, "step": 2}},
            f"search_space.{EPOCHS}",
            "not a multiple of step 2",
        ),
        (
            {EPOCHS: {"type": "uniform", "low": 1, "high": 3}},
            f"search_space.{EPOCHS}",
            "makes an invalid job",
        ),
        (
            {"training_type.r": {"type": "choice", "values": [4, 4]}},
            "search_space.training_type.r",
            "lists 4 twice",
        ),
        (
            {"training_type.r": {"type": "choice", "values": [0, 8]}},
            "search_space.training_type.r",
            "the value 0 makes an invalid job",
        ),
        (
            {"training_type.type": {"type": "choice", "values": ["lora", "partial"]}},
            "search_space.training_type.type",
            "'partial' makes an invalid job",
        ),
        (
            {"training_type.trainable_layers": {"type": "int", "low": 1, "high": 40}},
            "search_space.training_type.trainable_layers",
            "the value 40 makes a job the service refuses",
        ),
        (
            {
                "method.supervised.hyperparameters.best_metric": {
                    "type": "choice",
                    "values": ["perplexity"],
                }
            },
            "search_space.method.supervised.hyperparameters.best_metric",
            "'perplexity' is not a classification metric",
        ),
    ],
)
def test_every_search_space_error_is_a_400_naming_the_path(
    api: Api, file_id: str, space: dict[str, Any], param: str, says: str
) -> None:
    if "trainable_layers" in param:
        base = body(file_id)["job"] | {"training_type": {"type": "freeze"}}
        sweep = body(file_id, job=base, search_space=space)
    else:
        sweep = body(file_id, search_space=space)
    response = api.client.post("/v1/fine_tuning/sweeps", json=sweep)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert says in error["message"], error["message"]


@pytest.mark.parametrize(
    ("overrides", "param", "says"),
    [
        ({"search_space": {LR: {"type": "normal", "mean": 1}}}, "search_space", "normal"),
        ({"objective": {"metric": "perplexity"}}, "objective.metric", "use one of eval_loss"),
        (
            {"sampler": "grid", "search_space": {LR: {"type": "uniform", "low": 0.1, "high": 0.2}}},
            f"search_space.{LR}",
            "grid sampler needs a choice or an int range",
        ),
        (
            {
                "sampler": "grid",
                "n_trials": 3,
                "search_space": {"training_type.r": {"type": "choice", "values": [4, 8]}},
            },
            "n_trials",
            "the grid holds 2 combinations",
        ),
        ({"max_parallel": 9}, "max_parallel", "TUNERY_QUOTA_CONCURRENT_JOBS"),
        ({"pruner": "asha"}, "pruner", "median"),
        ({"job": {"model": "no-such-model", "training_file": "x"}}, "job", "Unknown model"),
    ],
)
def test_other_sweep_fields_are_checked(
    api: Api, file_id: str, overrides: dict[str, Any], param: str, says: str
) -> None:
    response = api.client.post("/v1/fine_tuning/sweeps", json=body(file_id, **overrides))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"] or "").startswith(param), error
    assert says in error["message"], error["message"]


# -- lifecycle ---------------------------------------------------------------------------------


def test_trials_run_as_jobs_up_to_max_parallel_and_the_best_wins(api: Api, file_id: str) -> None:
    sweep = create(api, body(file_id))
    assert sweep["status"] == "running"
    assert sweep["objective"] == {"metric": "accuracy", "direction": "maximize"}
    first = running_trials(sweep)
    assert len(first) == 2 and sorted(api.enqueued) == sorted(t["job_id"] for t in first)
    for trial in first:
        job = api.client.get(f"/v1/fine_tuning/jobs/{trial['job_id']}").json()
        assert job["hyperparameters"]["learning_rate"] == pytest.approx(trial["params"][LR])
        assert job["training_type"]["r"] == trial["params"]["training_type.r"]
        assert job["hyperparameters"]["best_metric"] == "accuracy"
        assert job["metadata"] == {"sweep": sweep["id"], "trial": str(trial["number"])}
    accuracy = {0: 0.6, 1: 0.9, 2: 0.7, 3: 0.8}
    while get(api, sweep["id"])["status"] == "running":
        for trial in running_trials(get(api, sweep["id"])):
            run_job(api, trial["job_id"])
            evaluate(api, trial["job_id"], 10, accuracy[trial["number"]])
            succeed(api, trial["job_id"], accuracy[trial["number"]])
        driver(api).run_once()
    done = get(api, sweep["id"])
    assert done["status"] == "succeeded"
    assert [t["state"] for t in done["trials"]] == ["complete"] * 4
    assert done["best_trial"] == 1 and done["best_value"] == pytest.approx(0.9)
    best_job = done["trials"][1]["job_id"]
    assert done["best_fine_tuned_model"] == f"ft:tiny-bert::{best_job}"
    assert done["trials"][1]["intermediate_values"] == [[10, 0.9]]
    assert optuna_states(api, sweep["id"]) == [TrialState.COMPLETE] * 4
    events = api.client.get(f"/v1/fine_tuning/sweeps/{sweep['id']}/events").json()["data"]
    assert events[0]["message"].startswith("Sweep succeeded: the best trial is 1")
    listed = api.client.get("/v1/fine_tuning/sweeps").json()["data"]
    assert [s["id"] for s in listed] == [sweep["id"]]


def test_pruning_stops_a_trial_that_falls_behind(api: Api, file_id: str) -> None:
    sweep = create(api, body(file_id, n_trials=4, max_parallel=1))
    sweep_id = sweep["id"]
    # two trials finish with good evaluations (the median pruner's warm-up)
    for accuracy in (0.8, 0.9):
        (trial,) = running_trials(get(api, sweep_id))
        run_job(api, trial["job_id"])
        evaluate(api, trial["job_id"], 10, accuracy)
        evaluate(api, trial["job_id"], 20, accuracy)
        succeed(api, trial["job_id"], accuracy)
        driver(api).run_once()
    (third,) = running_trials(get(api, sweep_id))
    run_job(api, third["job_id"])
    evaluate(api, third["job_id"], 10, 0.1)
    driver(api).run_once()
    pruned = get(api, sweep_id)["trials"][2]
    assert pruned["state"] == "pruned" and pruned["steps"] == 10
    assert pruned["intermediate_values"] == [[10, 0.1]]
    with sessions(api)() as session:
        job = session.get(JobRow, third["job_id"])
        assert job is not None and job.cancel_requested and job.status == "running"
        # the trainer ran on a little before the worker saw the flag: those steps count
        outcomes.progressed(job, 13, 40, 1.3, 0, time.time())
        # the worker sees the flag and stops the trainer, as for a cancel
        outcomes.cancelled(session, job)
        session.commit()
    events = api.client.get(f"/v1/fine_tuning/jobs/{third['job_id']}/events").json()["data"]
    assert any(e["message"].startswith(f"Pruned by sweep {sweep_id} at step 10") for e in events)
    assert optuna_states(api, sweep_id)[2] == TrialState.PRUNED
    # the pruned trial frees its place: the fourth starts
    driver(api).run_once()
    now = get(api, sweep_id)
    assert [t["number"] for t in running_trials(now)] == [3]
    assert now["trials"][2]["steps"] == 13


def third_trial_running(
    api: Api, file_id: str, n_trials: int, losses: tuple[float, float]
) -> tuple[str, str]:
    """A sweep (one trial at a time) whose first two trials ran to their end at 0.5 accuracy
    (the median pruner's warm-up), with the given eval_loss at their first evaluation, and
    whose third trial's job is running: (the sweep's id, that job's id)."""
    sweep_id = create(api, body(file_id, n_trials=n_trials, max_parallel=1))["id"]
    for loss in losses:
        (trial,) = running_trials(get(api, sweep_id))
        run_job(api, trial["job_id"])
        evaluate(api, trial["job_id"], 10, 0.5, loss)
        evaluate(api, trial["job_id"], 40, 0.5, loss)
        succeed(api, trial["job_id"], 0.5)
        driver(api).run_once()
    (third,) = running_trials(get(api, sweep_id))
    run_job(api, third["job_id"])
    return sweep_id, third["job_id"]


def test_a_trial_level_with_the_median_goes_by_its_eval_loss(api: Api, file_id: str) -> None:
    sweep_id, third = third_trial_running(api, file_id, 4, (0.6, 0.7))
    # level on accuracy, behind on loss: pruned
    evaluate(api, third, 10, 0.5, loss=0.69)
    driver(api).run_once()
    trials = get(api, sweep_id)["trials"]
    assert trials[2]["state"] == "pruned"
    # the trial shows the metric as it was, not the value the pruner judged
    assert trials[2]["intermediate_values"] == [[10, 0.5]]
    # level on accuracy, ahead on loss: goes on
    (fourth,) = running_trials(get(api, sweep_id))
    run_job(api, fourth["job_id"])
    evaluate(api, fourth["job_id"], 10, 0.5, loss=0.6)
    driver(api).run_once()
    assert get(api, sweep_id)["trials"][3]["state"] == "running"


def test_a_trial_ahead_on_the_metric_is_never_pruned_for_its_loss(api: Api, file_id: str) -> None:
    sweep_id, third = third_trial_running(api, file_id, 3, (0.1, 0.1))
    evaluate(api, third, 10, 0.55, loss=5.0)
    driver(api).run_once()
    assert get(api, sweep_id)["trials"][2]["state"] == "running"


def test_the_last_evaluation_is_never_pruned(api: Api, file_id: str) -> None:
    sweep_id, third = third_trial_running(api, file_id, 3, (0.6, 0.6))
    evaluate(api, third, 10, 0.5, loss=0.5)
    driver(api).run_once()
    assert get(api, sweep_id)["trials"][2]["state"] == "running"
    # behind the median at its last evaluation (step 40 of 40): nothing left to save, so it
    # completes with its result instead of being pruned at its end
    evaluate(api, third, 40, 0.1, loss=2.0)
    driver(api).run_once()
    assert get(api, sweep_id)["trials"][2]["state"] == "running"
    succeed(api, third, 0.1)
    driver(api).run_once()
    done = get(api, sweep_id)
    assert [t["state"] for t in done["trials"]] == ["complete"] * 3


def test_cancel_stops_running_trials_and_leaves_none_running_in_optuna(
    api: Api, file_id: str
) -> None:
    sweep = create(api, body(file_id))
    first, second = running_trials(sweep)
    run_job(api, first["job_id"])
    response = api.client.post(f"/v1/fine_tuning/sweeps/{sweep['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert {t["state"] for t in cancelled["trials"]} == {"cancelled"}
    running = api.client.get(f"/v1/fine_tuning/jobs/{first['job_id']}").json()
    queued = api.client.get(f"/v1/fine_tuning/jobs/{second['job_id']}").json()
    assert running["status"] == "running"  # its worker stops it: cancel_requested is set
    assert queued["status"] == "cancelled"
    assert TrialState.RUNNING not in optuna_states(api, sweep["id"])
    assert driver(api).run_once() == []  # nothing new starts
    again = api.client.post(f"/v1/fine_tuning/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]


def test_a_failed_job_fails_its_trial_and_a_lost_worker_resumes_it(api: Api, file_id: str) -> None:
    sweep = create(api, body(file_id, n_trials=2, max_parallel=2))
    lost, failing = running_trials(sweep)
    run_job(api, lost["job_id"], owner="worker-gone")
    attempt, owner = run_job(api, failing["job_id"])
    with sessions(api)() as session:
        row = state.owned(session, failing["job_id"], owner, attempt)
        assert row is not None
        outcomes.failed(session, row, {"code": "oom", "message": "out of memory", "param": None})
        # the lost worker's lease runs out: the reconciler requeues its job
        gone = session.get(JobRow, lost["job_id"])
        assert gone is not None
        gone.lease_expires_at = time.time() - 1
        session.commit()
        assert reconcile(session, 120) == [lost["job_id"]]
        session.commit()
    driver(api).run_once()
    now = get(api, sweep["id"])
    assert [t["state"] for t in now["trials"]] == ["running", "failed"]
    assert now["trials"][1]["error"] == "out of memory"
    assert optuna_states(api, sweep["id"]) == [TrialState.RUNNING, TrialState.FAIL]
    # the requeued job is claimed again and succeeds: its trial completes
    run_job(api, lost["job_id"], owner="worker-b")
    evaluate(api, lost["job_id"], 10, 0.75)
    succeed(api, lost["job_id"], 0.75)
    driver(api).run_once()
    done = get(api, sweep["id"])
    assert done["status"] == "succeeded" and done["best_trial"] == 0
    assert TrialState.RUNNING not in optuna_states(api, sweep["id"])


def test_a_grid_sweep_tries_each_point_once(api: Api, file_id: str) -> None:
    space = {"training_type.r": {"type": "choice", "values": [4, 8, 16]}}
    sweep = create(
        api, body(file_id, sampler="grid", n_trials=3, max_parallel=2, search_space=space)
    )
    while get(api, sweep["id"])["status"] == "running":
        for trial in running_trials(get(api, sweep["id"])):
            run_job(api, trial["job_id"])
            succeed(api, trial["job_id"], trial["params"]["training_type.r"] / 20)
        driver(api).run_once()
    done = get(api, sweep["id"])
    assert sorted(t["params"]["training_type.r"] for t in done["trials"]) == [4, 8, 16]
    assert done["status"] == "succeeded" and done["best_value"] == pytest.approx(0.8)


def test_an_optuna_trial_asked_without_a_row_is_told_fail(api: Api, file_id: str) -> None:
    sweep = create(api, body(file_id, n_trials=3, max_parallel=1))
    url = study.storage_url(api.settings.database_url)
    orphan = study.load_study(url, sweep["id"]).ask()  # a pass that died before its commit
    assert optuna_states(api, sweep["id"])[orphan.number] == TrialState.RUNNING
    driver(api).run_once()
    assert optuna_states(api, sweep["id"])[orphan.number] == TrialState.FAIL
    assert isinstance(orphan, optuna.trial.Trial)

"""`tunery sweeps ...` against the real API in-process (SQLite, and Postgres when reachable):
create from a YAML spec, list, get, watch (to its end, trials played by the job rules a
worker applies, the driver by SweepDriver.run_once), cancel, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.conftest import Api
from tests.app.sweeps.test_sweeps_api import driver, evaluate, get, run_job, succeed
from tests.tunery_client.test_cli_commands import run, upload
from tunery_client import sweeps
from tunery_client.api import ClientError

SPEC = """\
job:
  model: tiny-bert
  seed: 3
  training_type: {type: lora, r: 4}
search_space:
  method.supervised.hyperparameters.learning_rate: {type: log_uniform, low: 1.0e-5, high: 1.0e-2}
  training_type.r: {type: choice, values: [4, 8]}
objective: {metric: accuracy}
n_trials: 2
max_parallel: 2
seed: 1
"""


def test_sweeps_create_watch_get_list_and_events(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_id = upload(api, tmp_path, capsys)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    assert run(api, "sweeps", "create", "--spec", str(spec), "--training-file", file_id) == 0
    out = capsys.readouterr().out
    assert "2 trials, 2 at a time, tpe sampler, median pruner" in out
    sweep_id = out.split()[1].rstrip(":")
    trials = get(api, sweep_id)["trials"]
    assert len(trials) == 2
    for trial, accuracy in zip(trials, (0.7, 0.9), strict=True):
        run_job(api, trial["job_id"])
        evaluate(api, trial["job_id"], 10, accuracy)
        succeed(api, trial["job_id"], accuracy)
    driver(api).run_once()
    assert run(api, "sweeps", "watch", sweep_id, "--interval", "0") == 0
    watched = capsys.readouterr().out
    assert "succeeded" in watched and "best: trial 1 (accuracy 0.9" in watched
    assert "TRIAL" in watched and "1*" in watched  # the table marks the best trial
    assert "Deploy the best: tunery deployments create ft:tiny-bert::" in watched
    assert run(api, "sweeps", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:3] == ["ID", "STATUS", "TRIALS"]
    assert listing[1].startswith(sweep_id) and "2/2" in listing[1]
    assert run(api, "sweeps", "get", sweep_id, "--json") == 0
    assert json.loads(capsys.readouterr().out)["best_trial"] == 1
    assert run(api, "sweeps", "events", sweep_id) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Sweep created" in lines[0] and "Sweep succeeded" in lines[-1]


def test_sweeps_cancel_and_bad_specs(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_id = upload(api, tmp_path, capsys)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    assert (
        run(api, "sweeps", "create", "--spec", str(spec), "--training-file", file_id, "--json") == 0
    )
    sweep_id = json.loads(capsys.readouterr().out)["id"]
    assert run(api, "sweeps", "cancel", sweep_id) == 0
    assert "is cancelled" in capsys.readouterr().out
    assert run(api, "sweeps", "watch", sweep_id, "--interval", "0") == 3

    broken = tmp_path / "broken.yaml"
    broken.write_text("job: [\n")
    with pytest.raises(ClientError, match="not valid YAML at line"):
        sweeps.read_spec(broken)
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(SPEC.replace("training_type.r:", "training_type.rank:"))
    with pytest.raises(ClientError, match=r"search_space\['training_type.rank'\]: 'rank' is not"):
        run(api, "sweeps", "create", "--spec", str(bad_path), "--training-file", file_id)

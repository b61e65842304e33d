from __future__ import annotations

import json

from app.jobs import hyperparameters, state
from app.jobs.reconciler import reconcile
from tests.app.conftest import Api, upload_text

CLASSIFY = "".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(10))
PROMPTS = "".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(10))


def test_create_resolves_defaults_and_enqueues_after_commit(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    response = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    # the worker that claims it checks the files again before training
    assert job["status"] == "validating_files" and job["task"] == "classification"
    assert job["training_type"]["type"] == "lora"
    hp = job["hyperparameters"]
    # "auto" n_epochs: 9 training rows (10 minus the validation split) -> 100 // 9 epochs
    assert hp["n_epochs"] == 11 and hp["batch_size"] == 16 and hp["learning_rate"] == 5e-4
    assert hp["learning_rate_multiplier"] == 1.0
    assert {k: hp[k] for k in hyperparameters.DEFAULT_OPTIONS} == hyperparameters.DEFAULT_OPTIONS
    assert "train_on_inputs" not in hp  # causal LM only
    # no selection by default: the job will export its final model
    assert hp["best_metric"] is None and hp["early_stopping"] is None
    assert [job[k] for k in ("result_checkpoint", "result_step", "result_reason")] == [None] * 3
    assert job["n_validation"] is None  # known once training starts
    assert job["method"]["supervised"]["hyperparameters"] == hp
    assert api.enqueued == [job["id"]]
    assert api.client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["id"] == job["id"]


def test_learning_rate_multiplier_scales_the_base_rate(api: Api) -> None:
    file = upload_text(api, "train.jsonl", PROMPTS)
    body = {
        "model": "tiny-llama",
        "training_file": file["id"],
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"learning_rate_multiplier": 2, "n_epochs": 1, "batch_size": 2}
            },
        },
        "training_type": {"type": "full"},
    }
    job = api.client.post("/v1/fine_tuning/jobs", json=body).json()
    assert job["hyperparameters"]["learning_rate"] == 4e-5
    assert job["hyperparameters"]["n_epochs"] == 1 and job["task"] == "causal-lm"


def test_unknown_model_lists_the_available_ones(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    response = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "gpt-9", "training_file": file["id"]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and "tiny-bert" in error["message"]
    assert "tiny-llama" in error["message"]


def test_wrong_format_for_the_task_says_which_is_needed(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    response = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": file["id"]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "training_file" and "prompt" in error["message"]


def test_invalid_fields_name_the_field(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    cases = [
        ({"n_epochs": 0}, "n_epochs"),
        ({"batch_size": "big"}, "batch_size"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"epochs": 3}, "epochs"),
    ]
    for hp, field in cases:
        response = api.client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "tiny-bert",
                "training_file": file["id"],
                "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
            },
        )
        assert response.status_code == 400, (hp, response.text)
        assert field in response.json()["error"]["param"], response.json()
    too_deep = api.client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "tiny-bert",
            "training_file": file["id"],
            "training_type": {"type": "freeze", "trainable_layers": 9},
        },
    )
    assert too_deep.status_code == 400
    assert "0 to 2" in too_deep.json()["error"]["message"]
    missing = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": "file-nope"}
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "training_file"


def test_cancel_queued_job_and_list_events_and_pages(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    ids = [
        api.client.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
        ).json()["id"]
        for _ in range(3)
    ]
    page = api.client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]

    cancelled = api.client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    again = api.client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel")
    assert again.status_code == 409
    events = api.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events").json()["data"]
    assert events[0]["object"] == "fine_tuning.job.event"
    assert "cancelled" in events[0]["message"]
    assert api.client.get("/v1/fine_tuning/jobs/ftjob-missing").status_code == 404


def test_claim_is_won_once_and_lost_leases_are_requeued(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    job_id = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
    ).json()["id"]
    make_session = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with make_session() as session:
        assert state.claim(session, job_id, "worker-a", lease_seconds=-1) == 1
        assert state.claim(session, job_id, "worker-b", lease_seconds=60) is None
        session.commit()
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "validating_files" and job["attempt"] == 1
    with make_session() as session:
        # worker-a died while checking the files: the job waits for the next worker
        assert reconcile(session, requeue_after_seconds=3600) == [job_id]
        session.commit()
    with make_session() as session:
        assert state.renew_lease(session, job_id, "worker-a", 1, 60) is False
        assert state.claim(session, job_id, "worker-b", lease_seconds=-1) == 2
        row = state.owned(session, job_id, "worker-b", 2)
        assert row is not None
        state.files_checked(row)
        session.commit()
    with make_session() as session:
        # worker-b died while training: requeued, to resume from its last checkpoint
        assert reconcile(session, requeue_after_seconds=3600) == [job_id]
        session.commit()
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempt"] == 2
    with make_session() as session:
        assert state.claim(session, job_id, "worker-c", lease_seconds=60) == 3
        session.commit()
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempt"] == 3


def test_a_job_that_keeps_losing_workers_fails_with_worker_lost(api: Api) -> None:
    file = upload_text(api, "train.jsonl", CLASSIFY)
    job_id = api.client.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file["id"]}
    ).json()["id"]
    make_session = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    for attempt in (1, 2, 3):
        with make_session() as session:
            assert state.claim(session, job_id, f"worker-{attempt}", lease_seconds=-1) == attempt
            row = state.owned(session, job_id, f"worker-{attempt}", attempt)
            assert row is not None
            if row.status == "validating_files":
                state.files_checked(row)
            session.commit()
        with make_session() as session:
            expected = [job_id] if attempt < 3 else []
            assert reconcile(session, requeue_after_seconds=3600, max_workers_lost=3) == expected
            session.commit()
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"
    assert "3 workers stopped answering" in job["error"]["message"]
    assert "TUNERY_MAX_WORKERS_LOST" in job["error"]["message"]
    messages = [
        e["message"] for e in api.client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    ]
    assert any("(worker_lost)" in m for m in messages)

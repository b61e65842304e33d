"""Hyperparameters, pause/resume, checkpoints and from_checkpoint through the API.

The worker's side is played by the state machine's own functions (claim, files_checked,
paused) and by checkpoint rows written the way the worker writes them; the trainer itself
runs in tests/worker/test_supervisor.py and tests/e2e.
"""

from __future__ import annotations

import json
import tarfile
from io import BytesIO
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.ids import new_id
from app.jobs import hyperparameters, service, state
from app.jobs.reconciler import reconcile
from app.storage import ArtifactStore
from app.tables import JobCheckpointRow, JobRow
from tests.app.conftest import Api, upload_text

CLASSIFY = "".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(10))
PROMPTS = "".join(json.dumps({"prompt": f"p{i}", "completion": f" c{i}"}) + "\n" for i in range(10))


def sessions(api: Api) -> sessionmaker[Session]:
    return api.client.app.state.sessionmaker  # type: ignore[attr-defined]


def create(api: Api, **body: Any) -> dict[str, Any]:
    response = api.client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def with_hyperparameters(file_id: str, model: str, **hp: Any) -> dict[str, Any]:
    return {
        "model": model,
        "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    }


def start_running(api: Api, job_id: str, owner: str = "worker-a") -> None:
    with sessions(api)() as session:
        attempt = state.claim(session, job_id, owner, lease_seconds=60)
        assert attempt is not None
        row = state.owned(session, job_id, owner, attempt)
        assert row is not None
        state.files_checked(row)
        session.commit()


def add_checkpoint(api: Api, job_id: str, step: int, **metrics: Any) -> JobCheckpointRow:
    """A checkpoint as the worker records it, with a servable model in the store."""
    store: ArtifactStore = api.client.app.state.store  # type: ignore[attr-defined]
    key = f"models/{job_id}/checkpoints/step-{step}/model"
    for name, content in (
        ("adapter_config.json", b"{}"),
        ("adapter_model.safetensors", b"weights"),
        ("tunery.json", b'{"format": "adapter"}'),
    ):
        store.write_stream(f"{key}/{name}", iter([content]))
    store.write_stream(
        f"models/{job_id}/checkpoints/step-{step}/trainer/optimizer.pt", iter([b"x"])
    )
    with sessions(api)() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        row = JobCheckpointRow(
            id=new_id("ftckpt"),
            job_id=job_id,
            step=step,
            epoch=step / 10,
            model_name=service.checkpoint_model_name(job, step),
            metrics={"step": step, **metrics},
            artifact_key=key,
            state_key=f"models/{job_id}/checkpoints/step-{step}/trainer",
            best_step=step,
            attempt=1,
        )
        session.add(row)
        session.commit()
        return row


def test_hyperparameters_are_validated_and_written_back(api: Api) -> None:
    classify = upload_text(api, "train.jsonl", CLASSIFY)["id"]
    prompts = upload_text(api, "prompts.jsonl", PROMPTS)["id"]
    job = create(
        api,
        **with_hyperparameters(
            prompts,
            "tiny-llama",
            n_epochs=2,
            lr_scheduler="cosine",
            warmup_ratio=0.1,
            weight_decay=0.01,
            max_grad_norm=0.5,
            gradient_accumulation_steps=2,
            eval_steps=5,
            checkpoint_steps=3,
            early_stopping={"patience": 2, "min_delta": 0.01},
            best_metric="token_accuracy",
            train_on_inputs=True,
            gradient_checkpointing=True,
            packing=False,
        ),
    )
    hp = job["hyperparameters"]
    assert hp["lr_scheduler"] == "cosine" and hp["warmup_ratio"] == 0.1
    assert (hp["eval_steps"], hp["checkpoint_steps"]) == (5, 3)
    # early stopping watches best_metric unless told otherwise
    assert hp["early_stopping"] == {
        "patience": 2,
        "metric": "token_accuracy",
        "min_delta": 0.01,
        "relative": True,
    }
    assert hp["best_metric"] == "token_accuracy" and hp["train_on_inputs"] is True
    assert hp["gradient_checkpointing"] is True and hp["packing"] is False
    per_epoch = create(api, **with_hyperparameters(prompts, "tiny-llama", eval_steps="epoch"))
    assert per_epoch["hyperparameters"]["eval_steps"] is None

    refused: list[tuple[str, str, dict[str, Any], str]] = [
        (classify, "tiny-bert", {"lr_scheduler": "exponential"}, "lr_scheduler"),
        (classify, "tiny-bert", {"warmup_ratio": 0.9}, "warmup_ratio"),
        (classify, "tiny-bert", {"max_grad_norm": -1}, "max_grad_norm"),
        (classify, "tiny-bert", {"eval_steps": 0}, "eval_steps"),
        (classify, "tiny-bert", {"checkpoint_steps": 0}, "checkpoint_steps"),
        (classify, "tiny-bert", {"early_stopping": {"patience": 0}}, "early_stopping"),
        (classify, "tiny-bert", {"best_metric": "perplexity"}, "best_metric"),
        (classify, "tiny-bert", {"train_on_inputs": True}, "train_on_inputs"),
        (prompts, "tiny-llama", {"early_stopping": {"metric": "f1"}}, "early_stopping.metric"),
    ]
    for file_id, model, hp_fields, param in refused:
        response = api.client.post(
            "/v1/fine_tuning/jobs", json=with_hyperparameters(file_id, model, **hp_fields)
        )
        assert response.status_code == 400, (hp_fields, response.text)
        error = response.json()["error"]
        assert param in error["param"], error
        assert error["message"], error


@pytest.mark.parametrize(("rows", "epochs"), [(1, 25), (9, 11), (40, 3), (100, 3), (20000, 1)])
def test_auto_n_epochs_follows_the_dataset_size(rows: int, epochs: int) -> None:
    assert hyperparameters.auto_n_epochs(rows) == epochs


def test_qlora_is_accepted_at_create_time(api: Api) -> None:
    prompts = upload_text(api, "prompts.jsonl", PROMPTS)["id"]
    job = create(
        api,
        model="tiny-llama",
        training_file=prompts,
        training_type={"type": "qlora", "r": 4, "alpha": 8},
    )
    assert job["training_type"]["type"] == "qlora"
    # the learning rate of LoRA: QLoRA trains the same adapter
    assert (
        job["hyperparameters"]["learning_rate"]
        == hyperparameters.BASE_LEARNING_RATE[("causal-lm", "lora")]
    )


def test_pause_and_resume_follow_the_state_machine(api: Api) -> None:
    file_id = upload_text(api, "train.jsonl", CLASSIFY)["id"]
    job_id = create(api, model="tiny-bert", training_file=file_id)["id"]
    api.enqueued.clear()

    early = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_pausable"
    not_paused = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert not_paused.status_code == 409 and "only a paused job" in not_paused.text

    start_running(api, job_id)
    pausing = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()
    assert pausing["status"] == "pausing"
    assert api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["status"] == "pausing"
    assert api.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").status_code == 409

    add_checkpoint(api, job_id, 4, train_loss=0.5)
    with sessions(api)() as session:
        # what the worker does once the trainer saved its checkpoint and exited
        row = state.owned(session, job_id, "worker-a", 1)
        assert row is not None and row.status == "pausing"
        state.paused(row)
        session.commit()
    paused = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert paused["status"] == "paused"

    resumed = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()
    assert resumed["status"] == "queued" and api.enqueued == [job_id]
    events = api.client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    assert events[0]["message"] == "Job resumed; it continues from checkpoint step 4."
    with sessions(api)() as session:
        assert state.claim(session, job_id, "worker-b", lease_seconds=60) == 2
        session.commit()
    assert api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running"


def test_a_paused_job_can_be_cancelled_and_keeps_its_checkpoints(api: Api) -> None:
    file_id = upload_text(api, "train.jsonl", CLASSIFY)["id"]
    job_id = create(api, model="tiny-bert", training_file=file_id)["id"]
    start_running(api, job_id)
    api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    add_checkpoint(api, job_id, 2)
    with sessions(api)() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        state.paused(row)
        session.commit()
    cancelled = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    listed = api.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in listed] == [2]


def test_a_worker_lost_while_pausing_leaves_the_job_paused(api: Api) -> None:
    file_id = upload_text(api, "train.jsonl", CLASSIFY)["id"]
    job_id = create(api, model="tiny-bert", training_file=file_id)["id"]
    start_running(api, job_id)
    api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    with sessions(api)() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        row.lease_expires_at = 0.0
        session.commit()
    with sessions(api)() as session:
        assert reconcile(session, requeue_after_seconds=3600) == []
        session.commit()
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "paused"


def test_checkpoints_list_like_openai_and_resolve_as_models(api: Api, tmp_path: Any) -> None:
    file_id = upload_text(api, "train.jsonl", CLASSIFY)["id"]
    job = create(api, model="tiny-bert", training_file=file_id, suffix="s1")
    job_id = job["id"]
    for step in (3, 6, 9):
        add_checkpoint(api, job_id, step, train_loss=1 / step, valid_loss=2 / step)

    first = api.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["object"] == "list" and page["has_more"] is True
    newest = page["data"][0]
    assert newest["object"] == "fine_tuning.job.checkpoint"
    assert newest["id"].startswith("ftckpt-") and newest["fine_tuning_job_id"] == job_id
    assert newest["step_number"] == 9
    assert newest["fine_tuned_model_checkpoint"] == f"ft:tiny-bert:s1:{job_id}:ckpt-step-9"
    assert newest["metrics"] == {"step": 9, "train_loss": 1 / 9, "valid_loss": 2 / 9}
    assert isinstance(newest["created_at"], int)
    rest = api.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"after": page["last_id"]}
    ).json()
    assert [c["step_number"] for c in rest["data"]] == [3] and rest["has_more"] is False

    model = api.client.get(f"/v1/models/{newest['fine_tuned_model_checkpoint']}").json()
    assert model["kind"] == "checkpoint" and model["step_number"] == 9
    assert model["job_id"] == job_id and model["format"] == "adapter"

    download = api.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{newest['id']}/content")
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=BytesIO(download.content), mode="r:gz") as tar:
        names = sorted(name.split("/", 1)[1] for name in tar.getnames())
    # the model only: the trainer state (optimizer.pt, ...) is never exported
    assert names == ["adapter_config.json", "adapter_model.safetensors", "tunery.json"]

    assert (
        api.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/ftckpt-nope/content").status_code
        == 404
    )
    assert api.client.get("/v1/fine_tuning/jobs/ftjob-nope/checkpoints").status_code == 404


def test_from_checkpoint_starts_a_job_from_another_jobs_weights(api: Api) -> None:
    file_id = upload_text(api, "train.jsonl", CLASSIFY)["id"]
    source = create(
        api,
        model="tiny-bert",
        training_file=file_id,
        training_type={"type": "lora", "r": 4, "alpha": 8},
    )
    checkpoint = add_checkpoint(api, source["id"], 5)

    by_name = create(
        api, model="tiny-bert", training_file=file_id, from_checkpoint=checkpoint.model_name
    )
    assert by_name["from_checkpoint"] == checkpoint.id
    assert by_name["training_type"] == source["training_type"]  # inherited
    by_id = create(
        api,
        model="tiny-bert",
        training_file=file_id,
        from_checkpoint=checkpoint.id,
        training_type={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
    )
    assert by_id["training_type"]["dropout"] == 0.1

    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"from_checkpoint": "ftckpt-missing"}, "from_checkpoint", "checkpoint_not_found"),
        (
            {"from_checkpoint": checkpoint.id, "training_type": {"type": "full"}},
            "training_type",
            "checkpoint_training_type_mismatch",
        ),
        (
            {"from_checkpoint": checkpoint.id, "training_type": {"type": "lora", "r": 16}},
            "training_type",
            "checkpoint_training_type_mismatch",
        ),
    ]
    for extra, param, code in cases:
        response = api.client.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file_id, **extra}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code), error

    prompts = upload_text(api, "prompts.jsonl", PROMPTS)["id"]
    other_base = api.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": prompts, "from_checkpoint": checkpoint.id},
    )
    assert other_base.status_code == 400
    assert other_base.json()["error"]["code"] == "checkpoint_model_mismatch"
    assert "set model to tiny-bert" in other_base.json()["error"]["message"]

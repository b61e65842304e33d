"""POST /v1/evaluations: checked up front, run by the worker's runner, listed and compared."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.evaluations import repository
from app.tables import EvaluationRow
from tests.app.conftest import Api, upload_text
from tests.app.evaluations.conftest import Evals
from tests.support.data import qa_rows, sentiment_rows


def upload(evals: Evals, rows: list[dict[str, Any]], name: str = "eval.jsonl") -> str:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    api = Api(evals.client, evals.settings)
    return str(upload_text(api, name, text)["id"])


def create(evals: Evals, **body: Any) -> Any:
    return evals.client.post("/v1/evaluations", json=body)


def test_a_classifier_is_scored_and_compared_with_its_base(evals: Evals) -> None:
    name = evals.tuned("classification", labels=["negative", "positive"])
    file_id = upload(evals, sentiment_rows(12))
    response = create(evals, model=name, file=file_id, compare_to="tiny-bert")
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["object"] == "evaluation" and created["status"] == "queued"
    assert created["task"] == "classification"
    assert evals.enqueued == [created["id"]]  # enqueued after commit

    assert evals.runner.run(created["id"]) == "succeeded"
    assert evals.runner.run(created["id"]) == "not-claimed"  # a duplicate message is harmless
    done = evals.client.get(f"/v1/evaluations/{created['id']}").json()
    assert done["status"] == "succeeded", done
    assert done["rows"] == 12 and done["finished_at"] >= done["started_at"]
    metrics, base = done["metrics"], done["compare_to_metrics"]
    for key in ("accuracy", "precision", "recall", "f1", "loss"):
        assert isinstance(metrics[key], float)
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert len(metrics["confusion_matrix"]) == 2
    assert sum(map(sum, metrics["confusion_matrix"])) == 12
    assert base["accuracy"] == 0.0  # the bare base's head knows none of these labels
    assert done["difference"]["accuracy"] == pytest.approx(metrics["accuracy"] - base["accuracy"])


def test_a_causal_lm_is_scored_with_loss_perplexity_and_exact_match(evals: Evals) -> None:
    name = evals.tuned("causal-lm")
    file_id = upload(evals, qa_rows(10))
    response = create(evals, model=name, file=file_id, compare_to="tiny-llama")
    assert response.status_code == 200, response.text
    created = response.json()
    assert evals.runner.run(created["id"]) == "succeeded"
    done = evals.client.get(f"/v1/evaluations/{created['id']}").json()
    metrics, diff = done["metrics"], done["difference"]
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-6)
    assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["token_accuracy"] <= 1
    assert diff["loss"] == pytest.approx(metrics["loss"] - done["compare_to_metrics"]["loss"])


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"model": "nope", "file": "FILE"}, 404, "model", "nope"),
        ({"model": "tiny-bert", "file": "file-nope"}, 400, "file", "upload it"),
        ({"model": "tiny-llama", "file": "FILE"}, 400, "file", "prompt"),
        (
            {"model": "tiny-bert", "file": "FILE", "compare_to": "tiny-llama"},
            400,
            "compare_to",
            "same task",
        ),
        (
            {"model": "tiny-bert", "file": "FILE", "compare_to": "tiny-bert"},
            400,
            "compare_to",
            "itself",
        ),
        ({"model": "tiny-bert", "file": "FILE", "compare_to": "nope"}, 404, "compare_to", "nope"),
        ({"model": "tiny-bert"}, 400, "file", "required"),
    ],
)
def test_what_cannot_be_evaluated_is_refused_up_front(
    evals: Evals, body: dict[str, Any], status: int, param: str, says: str
) -> None:
    file_id = upload(evals, sentiment_rows(10))
    body = {k: (file_id if v == "FILE" else v) for k, v in body.items()}
    response = create(evals, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert evals.enqueued == []


def test_a_model_deleted_before_the_run_fails_with_the_reason(evals: Evals) -> None:
    name = evals.tuned("classification")
    created = create(evals, model=name, file=upload(evals, sentiment_rows(10))).json()
    assert evals.client.delete(f"/v1/models/{name}").status_code == 200
    assert evals.runner.run(created["id"]) == "failed"
    done = evals.client.get(f"/v1/evaluations/{created['id']}").json()
    assert done["status"] == "failed" and done["error"]["param"] == "model"
    assert name in done["error"]["message"]


def test_list_is_paginated_newest_first(evals: Evals) -> None:
    file_id = upload(evals, sentiment_rows(10))
    ids = [create(evals, model="tiny-bert", file=file_id).json()["id"] for _ in range(3)]
    first = evals.client.get("/v1/evaluations", params={"limit": 2}).json()
    assert [e["id"] for e in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = evals.client.get("/v1/evaluations", params={"after": first["last_id"]}).json()
    assert [e["id"] for e in rest["data"]] == ids[:1] and not rest["has_more"]
    assert evals.client.get("/v1/evaluations", params={"after": "eval-nope"}).status_code == 400
    assert evals.client.get("/v1/evaluations/eval-nope").status_code == 404


def test_an_expired_lease_lets_another_worker_take_over(evals: Evals) -> None:
    file_id = upload(evals, sentiment_rows(10))
    eval_id = create(evals, model="tiny-bert", file=file_id).json()["id"]
    make_session = evals.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with make_session() as session:
        assert repository.claim(session, eval_id, "worker-a", lease_seconds=-1) == 1
        assert repository.claim(session, eval_id, "worker-b", lease_seconds=60) == 2
        assert repository.claim(session, eval_id, "worker-c", lease_seconds=60) is None
        assert not repository.renew(session, eval_id, "worker-a", 1, 60)
        assert not repository.finish(session, eval_id, "worker-a", 1, status="succeeded")
        assert repository.finish(session, eval_id, "worker-b", 2, status="failed", error={})
        session.commit()
        row = session.get(EvaluationRow, eval_id)
        assert row is not None and row.status == "failed" and row.attempt == 2


def test_the_reconciler_sends_lost_evaluations_again(evals: Evals) -> None:
    """A lost message, a wiped broker and a lost runner: each evaluation is sent again; the
    runner lost max_workers_lost times fails with worker_lost instead."""
    from app.jobs.reconciler import Reconciler

    name = evals.tuned("classification", labels=["negative", "positive"])
    file_id = upload(evals, sentiment_rows(10))
    response = create(evals, model=name, file=file_id)
    assert response.status_code == 200, response.text
    first = response.json()["id"]
    make_session = evals.client.app.state.sessionmaker  # type: ignore[attr-defined]
    sent: list[str] = []
    broker = {"intact": True}

    class Marker:
        def intact(self) -> bool:
            return broker["intact"]

        def mark(self) -> None:
            broker["intact"] = True

    reconciler = Reconciler(
        make_session,
        enqueue=lambda job_id: None,
        every_seconds=60,
        requeue_after_seconds=30,
        broker=Marker(),
        enqueue_evaluation=sent.append,
        max_workers_lost=2,
    )
    assert reconciler.run_once() == []  # just sent: its message may still be on its way
    with make_session() as session:
        session.get(EvaluationRow, first).enqueued_at -= 31
        session.commit()
    assert reconciler.run_once() == [first] and sent == [first]  # the message was lost
    assert reconciler.run_once() == []  # and not again at once

    broker["intact"] = False  # the broker restarted empty: every queued one goes again
    assert reconciler.run_once() == [first] and broker["intact"]

    # a runner took it and died (its lease ran out): queued again for a new attempt
    with make_session() as session:
        assert repository.claim(session, first, "worker-a", lease_seconds=-1) == 1
        session.commit()
    assert reconciler.run_once() == [first]
    lost = evals.client.get(f"/v1/evaluations/{first}").json()
    assert lost["status"] == "queued"
    with make_session() as session:
        assert repository.renew(session, first, "worker-a", 1, 60) is False
    # the second runner lost on it: it fails rather than kill a third
    with make_session() as session:
        assert repository.claim(session, first, "worker-b", lease_seconds=-1) == 2
        session.commit()
    assert reconciler.run_once() == []
    failed = evals.client.get(f"/v1/evaluations/{first}").json()
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "worker_lost"
    assert "2 workers stopped answering" in failed["error"]["message"]
    assert evals.runner.run(first) == "not-claimed"

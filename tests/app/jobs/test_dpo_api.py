"""DPO job requests: OpenAI's method shape, its "auto" values, and what is refused."""

from __future__ import annotations

import json
from typing import Any

from tests.app.conftest import Api, upload_text

PREFERENCES = "".join(
    json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": f"q{i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}],
        }
    )
    + "\n"
    for i in range(10)
)
CHATS = "".join(
    json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    + "\n"
    for _ in range(10)
)


def dpo_job(api: Api, file_id: str, model: str = "tiny-llama", **hp: Any) -> Any:
    body = {
        "model": model,
        "training_file": file_id,
        "method": {"type": "dpo", "dpo": {"hyperparameters": hp}},
    }
    return api.client.post("/v1/fine_tuning/jobs", json=body)


def test_dpo_job_resolves_auto_and_shows_openai_method(api: Api) -> None:
    file = upload_text(api, "prefs.jsonl", PREFERENCES)
    assert file["status"] == "processed", file
    response = dpo_job(api, file["id"], beta="auto", n_epochs=2, batch_size="auto")
    assert response.status_code == 200, response.text
    job = response.json()
    shown = job["method"]
    assert shown["type"] == "dpo" and "supervised" not in shown
    hp = shown["dpo"]["hyperparameters"]
    assert hp["beta"] == 0.1 and hp["loss_type"] == "sigmoid" and hp["sft_weight"] == 0.0
    assert hp["n_epochs"] == 2 and hp["batch_size"] == 8
    # DPO's own base learning rate (LoRA): gentler than supervised training's
    assert hp["learning_rate"] == 5e-5 and hp["learning_rate_multiplier"] == 1.0
    # the trainer's hyperparameters stay the supervised set
    assert "beta" not in job["hyperparameters"]


def test_loss_variants_and_reward_metrics(api: Api) -> None:
    file = upload_text(api, "prefs.jsonl", PREFERENCES)
    response = dpo_job(
        api,
        file["id"],
        beta=0.5,
        loss_type="ipo",
        sft_weight=1.0,
        best_metric="reward_accuracy",
        early_stopping={"patience": 2, "metric": "reward_margin"},
    )
    assert response.status_code == 200, response.text
    hp = response.json()["method"]["dpo"]["hyperparameters"]
    assert (hp["beta"], hp["loss_type"], hp["sft_weight"]) == (0.5, "ipo", 1.0)
    assert hp["best_metric"] == "reward_accuracy"


def test_refusals_say_what_to_change(api: Api) -> None:
    prefs = upload_text(api, "prefs.jsonl", PREFERENCES)["id"]
    chats = upload_text(api, "chat.jsonl", CHATS)["id"]
    cases: list[tuple[Any, str, str]] = [
        (dpo_job(api, prefs, model="tiny-bert"), "method.type", "is a classification model"),
        (dpo_job(api, chats), "training_file", "preferred_output"),
        (dpo_job(api, prefs, beta=3), "beta", "less than or equal to 2"),
        (dpo_job(api, prefs, loss_type="hinge"), "loss_type", "sigmoid"),
        (dpo_job(api, prefs, best_metric="perplexity"), "best_metric", "reward_accuracy"),
        (dpo_job(api, prefs, train_on_inputs=True), "train_on_inputs", "does not apply to DPO"),
        (dpo_job(api, prefs, packing=True), "packing", "does not apply to DPO"),
        (
            api.client.post(
                "/v1/fine_tuning/jobs",
                json={"model": "tiny-llama", "training_file": prefs},
            ),
            "training_file",
            "preference format",
        ),
        (
            api.client.post(
                "/v1/fine_tuning/jobs",
                json={
                    "model": "tiny-llama",
                    "training_file": prefs,
                    "method": {"type": "dpo", "supervised": {}},
                },
            ),
            "method",
            "method.dpo",
        ),
        (dpo_job(api, prefs, model="ft:tiny-llama::ftjob-nothere"), "model", "no fine-tuned"),
    ]
    for response, param, says in cases:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert param in (error["param"] or ""), error
        assert says in error["message"], error

from __future__ import annotations

from tests.app.conftest import Api


def test_lists_base_models_with_their_task(api: Api) -> None:
    data = api.client.get("/v1/models").json()["data"]
    tasks = {m["id"]: m["task"] for m in data}
    assert tasks["tiny-bert"] == "classification"
    assert tasks["tiny-llama"] == "causal-lm"
    assert api.client.get("/v1/models/tiny-llama").json()["object"] == "model"
    assert api.client.get("/v1/models/nope").status_code == 404
    assert api.client.delete("/v1/models/tiny-llama").status_code == 400


def test_each_model_says_what_its_predict_takes(api: Api) -> None:
    """`predicts` comes from the task's predictor hook: a classifier takes text and top_k,
    a causal LM text or chat, the decoding parameters, and streams."""
    import task_plugins

    data = {m["id"]: m for m in api.client.get("/v1/models").json()["data"]}
    bert, llama = data["tiny-bert"]["predicts"], data["tiny-llama"]["predicts"]
    assert bert == {"inputs": ["text"], "parameters": ["top_k"], "streams": False}
    assert llama["inputs"] == ["chat", "text"] and llama["streams"] is True
    assert {"max_new_tokens", "temperature", "top_p", "seed"} <= set(llama["parameters"])
    for model in data.values():
        hook = task_plugins.get(model["task"]).predictor
        assert model["predicts"]["parameters"] == sorted(hook.parameters)
    assert api.client.get("/v1/models/tiny-llama").json()["predicts"] == llama


def test_deploy_and_predict_answer_503_while_inference_is_down(api: Api) -> None:
    dep = api.client.post("/v1/deployments", json={"model": "tiny-bert"}).json()
    assert dep["object"] == "deployment" and dep["status"] == "loading"
    # the background load could not reach the server: recorded, not raised
    after = api.client.get(f"/v1/deployments/{dep['id']}").json()
    assert after["status"] == "failed"
    assert "not reachable" in after["error"]["message"]
    assert api.client.get("/readyz").json()["checks"]["inference"] == "unreachable"

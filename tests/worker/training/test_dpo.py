"""DPO in the trainer child on the tiny Llama: the loss, the reward figures, the reference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.jobs.spec import DpoMethod
from task_plugins.causal_lm.preference_training import encode_preference, last_labelled_run
from tests.worker.training.conftest import make_spec
from worker.training import run
from worker.training.dpo import REWARD_STATS, PreferenceCollator, dpo_loss, policy_logps
from worker.training.metrics import IGNORE_INDEX


def preference_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": f"question: what is {i % 10} ? answer:",
            "chosen": f" {i % 10}",
            "rejected": " i do not know",
        }
        for i in range(n)
    ]


def dpo_spec(tmp_path: Path, base: Path, rows: list[dict[str, Any]], **method: Any) -> Any:
    spec = make_spec(tmp_path, "causal-lm", base, rows[:-4], rows[-4:], n_epochs=3)
    spec["method"] = {"type": "dpo", **method}
    return spec


def margins(model_dir: Path, base: Path, rows: list[dict[str, Any]]) -> torch.Tensor:
    """log p(chosen) - log p(rejected) per row, under the model in model_dir."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    features = encode_preference(rows, tokenizer, 64).features
    batch = PreferenceCollator(int(tokenizer.pad_token_id or 0))(features)
    with torch.no_grad():
        logps, _ = policy_logps(model.eval(), batch)
    return logps[: len(rows)] - logps[len(rows) :]


def test_loss_matches_the_formulas() -> None:
    logps = torch.tensor([-2.0, -4.0, -6.0, -5.0])  # summed: 2 chosen rows, then 2 rejected
    reference = torch.tensor([-3.0, -4.0, -4.0, -4.0])
    counts = torch.tensor([2, 4, 2, 1])
    sigmoid, stats = dpo_loss(DpoMethod(type="dpo", beta=0.5), logps, reference, counts)
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([-2.0, -1.0])
    assert float(sigmoid) == pytest.approx(float(-F.logsigmoid(0.5 * (chosen - rejected)).mean()))
    assert float(stats["reward_chosen"]) == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    assert float(stats["reward_rejected"]) == pytest.approx(0.5 * (-2.0 - 1.0) / 2)
    assert float(stats["reward_margin"]) == pytest.approx(0.5 * (3.0 + 1.0) / 2)
    assert float(stats["reward_accuracy"]) == 1.0
    ipo, _ = dpo_loss(DpoMethod(type="dpo", beta=0.5, loss_type="ipo"), logps, reference, counts)
    per_token = torch.tensor([1.0 / 2 - -2.0 / 2, 0.0 / 4 - -1.0 / 1])
    assert float(ipo) == pytest.approx(float(((per_token - 1.0) ** 2).mean()))
    rpo = DpoMethod(type="dpo", beta=0.5, sft_weight=2.0)
    with_sft, _ = dpo_loss(rpo, logps, reference, counts)
    nll = (2.0 + 4.0) / (2 + 4)
    assert float(with_sft) == pytest.approx(float(sigmoid) + 2.0 * nll)


def test_only_the_answer_is_labelled() -> None:
    labels = [IGNORE_INDEX, 5, 6, IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]
    assert last_labelled_run(labels) == [IGNORE_INDEX] * 5 + [7, 8, IGNORE_INDEX]


def test_lora_dpo_raises_the_margin_and_reports_rewards(tmp_path: Path, tiny_llama: Path) -> None:
    rows = preference_rows(20)
    spec = dpo_spec(tmp_path, tiny_llama, rows, beta=0.1)
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    assert result["type"] == "succeeded"
    logs = [e for e in events if e["type"] == "log"]
    evals = [e for e in events if e["type"] == "eval"]
    assert logs and evals
    for event in logs + evals:
        for name in REWARD_STATS:
            assert math.isfinite(event[name]), (name, event)
    assert "perplexity" not in evals[-1]
    # the reference is the starting model: the first log's rewards are near zero, the last
    # evaluation prefers the chosen answers of rows it never trained on
    assert abs(logs[0]["reward_margin"]) < 0.05
    assert evals[-1]["reward_accuracy"] > 0.5 and evals[-1]["reward_margin"] > 0
    assert result["metrics"]["reward_margin"] == pytest.approx(evals[-1]["reward_margin"])
    # the exported model's margins went up over the base's on the training prompts
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    merged = PeftModel.from_pretrained(base, Path(spec["output_dir"]) / "model").merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    before = margins(tiny_llama, tiny_llama, rows[:-4])
    after = margins(tmp_path / "merged", tiny_llama, rows[:-4])
    assert float((after - before).mean()) > 0


def test_full_dpo_with_ipo_and_an_sft_term(tmp_path: Path, tiny_llama: Path) -> None:
    spec = dpo_spec(
        tmp_path,
        tiny_llama,
        preference_rows(12),
        beta=0.5,
        loss_type="ipo",
        sft_weight=1.0,
    )
    spec["training_type"] = {"type": "full"}
    spec["hyperparameters"]["best_metric"] = "reward_accuracy"
    events: list[dict[str, Any]] = []
    result = run.train(spec, events.append)
    assert result["type"] == "succeeded"
    assert set(REWARD_STATS) <= set(result["metrics"])
    assert all(math.isfinite(e["train_loss"]) for e in events if e["type"] == "log")


def test_supervised_metric_refused_for_dpo(tmp_path: Path, tiny_llama: Path) -> None:
    spec = dpo_spec(tmp_path, tiny_llama, preference_rows(8))
    spec["hyperparameters"]["best_metric"] = "perplexity"
    with pytest.raises(Exception, match="not a causal-lm dpo metric"):
        run.train(spec, lambda event: None)


def test_resume_continues_dpo(tmp_path: Path, tiny_llama: Path) -> None:
    rows = preference_rows(12)
    spec = dpo_spec(tmp_path, tiny_llama, rows)
    spec["hyperparameters"]["n_epochs"] = 1
    first: list[dict[str, Any]] = []
    run.train(spec, first.append)
    per_epoch = first[0]["total_steps"]
    spec = {**spec, "resume": True, "hyperparameters": {**spec["hyperparameters"], "n_epochs": 2}}
    second: list[dict[str, Any]] = []
    result = run.train(spec, second.append)
    assert f"resuming from checkpoint-{per_epoch}" in str(second)
    assert next(e["step"] for e in second if e["type"] == "progress") == per_epoch + 1
    assert result["type"] == "succeeded"

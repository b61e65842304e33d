"""bench/gpu_check.py: its report's rules, its FLOPs arithmetic, and its --dry-run end to end
(the same wiring as the GPU run, on CPU with tiny models), so the script cannot rot between
the sessions that are lent a device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def _report(*steps: dict[str, Any]) -> dict[str, Any]:
    summary = dict.fromkeys(gpu_check.STATUSES, 0)
    for step in steps:
        summary[step["status"]] += 1
    return {
        "version": 1,
        "mode": "gpu",
        "complete": True,
        "environment": {"torch": "x", "device_name": "NVIDIA H200"},
        "steps": list(steps),
        "summary": summary,
    }


def _step(name: str, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "seconds": 1.0, "figures": {}, "checks": []} | extra


def test_a_well_formed_report_passes() -> None:
    report = _report(
        _step("train_lora", figures={"tokens_per_second": 1e5, "mfu": 0.31}),
        _step("train_qlora", "skipped", notes=["QLoRA needs CUDA"]),
        _step("ddp", "failed", checks=[{"name": "losses agree", "ok": False, "detail": "1 vs 2"}]),
    )
    assert gpu_check.validate_report(report) == []
    table = gpu_check.text_table(report)
    assert "tokens_per_second=1e+05" in table and "mfu=0.31" in table
    assert "FAILED losses agree: 1 vs 2" in table
    assert "(QLoRA needs CUDA)" in table


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (_step("a", "skipped"), "skipped without a reason"),
        (_step("a", "failed"), "failed without an error or a failed check"),
        (_step("a", "maybe"), "status 'maybe'"),
        (_step("a", seconds=-1), "seconds"),
        (_step("a", checks=[{"name": "x", "ok": "yes", "detail": ""}]), "check"),
    ],
)
def test_malformed_steps_are_named(step: dict[str, Any], problem: str) -> None:
    report = _report(step) if step["status"] in gpu_check.STATUSES else _report()
    if step["status"] not in gpu_check.STATUSES:
        report["steps"] = [step]
    problems = gpu_check.validate_report(report)
    assert any(problem in p for p in problems), problems


def test_an_incomplete_report_says_so() -> None:
    report = _report(_step("a"))
    report["complete"] = False
    assert gpu_check.validate_report(report) == []
    assert "INCOMPLETE" in gpu_check.text_table(report)


def test_the_summary_must_count_the_steps() -> None:
    report = _report(_step("a"))
    report["summary"]["ok"] = 2
    assert any("does not count" in p for p in gpu_check.validate_report(report))


def test_training_flops_per_token() -> None:
    params = {"total": 1000, "non_embedding": 800, "layers": 2, "hidden_size": 16}
    # full: 6N over the matmul parameters (4N + 2 x trainable), plus 12 x L x d x tokens
    full = gpu_check.training_flops_per_token(params, trainable=800, mean_tokens_per_row=10)
    assert full == 4 * 800 + 2 * 800 + 12 * 2 * 16 * 10
    # LoRA: no weight gradients for the frozen base
    lora = gpu_check.training_flops_per_token(params, trainable=8, mean_tokens_per_row=10)
    assert full - lora == 2 * (800 - 8)


def test_peak_flops_by_device_name() -> None:
    assert gpu_check.peak_flops("NVIDIA H200", None) == 989e12
    assert gpu_check.peak_flops("Some Other GPU", None) is None
    assert gpu_check.peak_flops("Some Other GPU", 100.0) == 100e12


# about 2 minutes on two idle cores; far more when the machine is shared (the CPU time is
# what it is, the wall time is not), so the limit is generous
DRY_RUN_TIMEOUT = 1500


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(DRY_RUN_TIMEOUT + 60)
def test_dry_run(tmp_path: Path) -> None:
    """Every step wired on CPU: ok, or skipped only where CUDA is needed, saying so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env |= {"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    log = tmp_path / "log"
    with log.open("w") as out:
        try:
            done = subprocess.run(
                [sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=DRY_RUN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the dry run ran over {DRY_RUN_TIMEOUT} s:\n{log.read_text()[-4000:]}")
    assert done.returncode == 0, log.read_text()[-6000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert gpu_check.validate_report(report) == []
    assert report["mode"] == "dry-run" and report["complete"] is True
    statuses = {step["name"]: step["status"] for step in report["steps"]}
    assert list(statuses) == list(gpu_check.STEPS)
    assert statuses.pop("train_qlora") == "skipped"
    assert set(statuses.values()) == {"ok"}, statuses
    (qlora,) = [step for step in report["steps"] if step["name"] == "train_qlora"]
    assert "CUDA" in qlora["notes"][0]
    table = (tmp_path / "gpu_check.txt").read_text()
    for name in gpu_check.STEPS:
        assert name in table

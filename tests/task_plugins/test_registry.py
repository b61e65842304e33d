"""The task registry: torch-free at import, every hook resolvable, each base model claimed by
the one task that can train it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, is_typeddict

import pytest

import task_plugins
from task_plugins.base import load_hook
from worker.training.plugin import TaskTrainer, trainer_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_api_side_of_every_task_imports_without_torch() -> None:
    # what the API imports to validate uploads, job requests and base models
    code = (
        "import sys, task_plugins, app.jobs.spec, app.jobs.service, app.files.formats, "
        "app.models.registry\n"
        "heavy = {'torch', 'transformers', 'peft', 'worker'} & set(sys.modules)\n"
        "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_task_packages_import_neither_the_service_nor_torch() -> None:
    # a leaf both sides import: its torch-free modules depend on nothing of Tunery's
    code = (
        "import sys, task_plugins, task_plugins.causal_lm.formats, "
        "task_plugins.text_classification.formats\n"
        "heavy = {'torch', 'transformers', 'peft', 'numpy', 'app', 'worker'} & set(sys.modules)\n"
        "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("config", "task"),
    [
        ({"model_type": "bert"}, "classification"),
        (
            {"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]},
            "classification",
        ),
        ({"model_type": "llama"}, "causal-lm"),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "causal-lm"),
        # unknown model types: the architecture decides, the most specific suffix first
        ({"model_type": "newlm", "architectures": ["NewLMHeadModel"]}, "causal-lm"),
        ({"model_type": "newlm", "architectures": ["NewForCausalLM"]}, "causal-lm"),
        ({"model_type": "newenc", "architectures": ["NewModel"]}, "classification"),
        (
            {"model_type": "newenc", "architectures": ["NewForSequenceClassification"]},
            "classification",
        ),
        ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, None),
        ({"model_type": "x", "architectures": "NotAList"}, None),
        ({}, None),
    ],
)
def test_a_base_model_is_claimed_by_its_task(config: dict[str, Any], task: str | None) -> None:
    assert task_plugins.task_of_config(config) == task


@pytest.mark.parametrize("task", task_plugins.TASKS, ids=lambda task: task.name)
def test_every_hook_of_a_task_resolves(task: task_plugins.TaskPlugin) -> None:
    trainer = trainer_for(task.name)
    assert isinstance(trainer, TaskTrainer) and trainer.plugin is task
    assert callable(load_hook(task.scorer))
    predictor = task.predictor
    hooks = (predictor.prepare, predictor.forward, predictor.finish)
    if predictor.engine == "batch":
        for hook in hooks:
            assert hook is not None and callable(load_hook(hook)), hook
    else:  # the decode engine tokenizes, samples and finishes generation itself
        assert hooks == (None, None, None) and predictor.streams
    assert is_typeddict(load_hook(predictor.output))
    assert predictor.inputs <= {"text", "chat", "image", "audio"}
    assert set(task.base_learning_rates) == {"lora", "full", "freeze"}


def test_every_format_a_task_trains_on_is_defined() -> None:
    defined = {row_format.name for row_format in task_plugins.row_formats()}
    defined |= {kind.name for task in task_plugins.TASKS for kind in task.file_kinds}
    for task in task_plugins.TASKS:
        assert task.methods[0] == task_plugins.SUPERVISED
        assert set(task.methods) <= {task_plugins.SUPERVISED, task_plugins.DPO}
        for method in task.methods:
            assert set(task.formats_for(method)) <= defined, (task.name, method)
        assert set(task.metrics.selectable) >= {"eval_loss"}
        assert set(task.metrics.lower_is_better) <= set(task.metrics.selectable)


def test_an_unknown_task_says_which_exist() -> None:
    with pytest.raises(task_plugins.UnknownTask) as caught:
        task_plugins.get("vision")
    assert "classification, causal-lm" in str(caught.value)

"""Recipes on tiny models: which parameters each one trains (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import PeftModel
from peft.utils import constants as peft_constants
from torch import nn
from transformers import PreTrainedModel

from app.failures import Failure
from app.jobs.spec import FreezeType, LoraType
from worker.training.recipes import apply_recipe, count_parameters, find_blocks, load_model


def ignore(level: str, text: str) -> None:
    pass


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.fixture
def bert_classifier(tiny_bert: Path) -> PreTrainedModel:
    return load_model("classification", tiny_bert, ["neg", "pos"])


@pytest.fixture
def llama(tiny_llama: Path) -> PreTrainedModel:
    return load_model("causal-lm", tiny_llama, [])


@pytest.mark.parametrize(
    ("layers", "expected_prefixes"),
    [
        (0, {"bert.pooler.", "classifier."}),
        (1, {"bert.pooler.", "classifier.", "bert.encoder.layer.1."}),
        (5, {"bert.pooler.", "classifier.", "bert.encoder.layer.0.", "bert.encoder.layer.1."}),
    ],
)
def test_freeze_trains_top_blocks_and_head(
    bert_classifier: PreTrainedModel, layers: int, expected_prefixes: set[str]
) -> None:
    found = find_blocks(bert_classifier)
    assert found is not None and found[0] == "bert.encoder.layer"
    notes: list[str] = []
    apply_recipe(
        bert_classifier,
        "classification",
        FreezeType(type="freeze", trainable_layers=layers),
        lambda level, text: notes.append(level),
    )
    names = trainable_names(bert_classifier)
    assert names and all(name.startswith(tuple(expected_prefixes)) for name in names)
    assert {prefix for prefix in expected_prefixes if any(n.startswith(prefix) for n in names)} == (
        expected_prefixes
    )
    assert notes == (["warning"] if layers > 2 else [])


def test_freeze_on_a_decoder_trains_final_norm_and_lm_head(llama: PreTrainedModel) -> None:
    found = find_blocks(llama)
    assert found is not None and found[0] == "model.layers"
    apply_recipe(llama, "causal-lm", FreezeType(type="freeze", trainable_layers=1), ignore)
    names = trainable_names(llama)
    assert {name.split(".")[0] + "." + name.split(".")[1] for name in names} == {
        "model.layers",
        "model.norm",
        "lm_head.weight",
    }
    assert all(not name.startswith("model.layers.0.") for name in names)
    trainable, total = count_parameters(llama)
    assert 0 < trainable < total


def test_lora_default_targets_and_saved_head(bert_classifier: PreTrainedModel) -> None:
    model = apply_recipe(bert_classifier, "classification", LoraType(type="lora", r=2), ignore)
    assert isinstance(model, PeftModel)
    names = trainable_names(model)
    assert any("query.lora_A" in name for name in names)
    assert not any("key.lora_A" in name for name in names)
    # the new head is trained and saved whole
    assert any(name.startswith("base_model.model.classifier.modules_to_save") for name in names)


def test_lora_falls_back_to_all_linear_without_a_peft_default(
    llama: PreTrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(peft_constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, "llama")
    from worker.training import recipes

    monkeypatch.setattr(
        recipes,
        "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
        peft_constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )
    model = apply_recipe(llama, "causal-lm", LoraType(type="lora"), ignore)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in trainable_names(model)}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= adapted
    assert not any("lm_head" in name for name in trainable_names(model))


def test_lora_explicit_targets_and_unknown_module(tiny_llama: Path) -> None:
    model = load_model("causal-lm", tiny_llama, [])
    peft_model = apply_recipe(
        model, "causal-lm", LoraType(type="lora", target_modules=["up_proj"]), ignore
    )
    assert all("up_proj.lora_" in name for name in trainable_names(peft_model))
    with pytest.raises(Failure) as caught:
        apply_recipe(
            load_model("causal-lm", tiny_llama, []),
            "causal-lm",
            LoraType(type="lora", target_modules=["no_such_layer"]),
            ignore,
        )
    assert caught.value.code == "invalid_training_type"
    assert caught.value.param == "training_type"

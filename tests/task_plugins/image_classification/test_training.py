"""Image classification training on a tiny ViT and ResNet, with real digit pictures."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from task_plugins.media.decode import load_image
from task_plugins.media.training import MediaCollator, random_resized_crop, top_k_accuracy
from tests.support.media import digit_images, folder_zip
from tests.support.models import build_tiny_resnet, build_tiny_vit
from worker.training.run import train


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


def image_spec(
    tmp_path: Path, base: Path, training_type: dict[str, Any], classes: int = 3, **hp: Any
) -> dict[str, Any]:
    archive = folder_zip(tmp_path / "digits.zip", digit_images(8, range(classes)))
    out = tmp_path / "work"
    out.mkdir()
    return {
        "job_id": "ftjob-image",
        "task": "image-classification",
        "base_model_dir": str(base),
        "train_file": {"path": str(archive), "filename": archive.name},
        "output_dir": str(out),
        "events_path": str(out / "events.jsonl"),
        "seed": 3,
        "hyperparameters": {
            "n_epochs": 2,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "validation_split": 0.25,
            **hp,
        },
        "training_type": training_type,
    }


LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def test_lora_on_a_bare_vit_gets_a_head_and_reloads_with_peft(
    tmp_path: Path, tiny_vit: Path
) -> None:
    spec = image_spec(tmp_path, tiny_vit, LORA, classes=6)
    events: list[dict[str, Any]] = []
    result = train(spec, events.append)
    assert result["type"] == "succeeded", events[-1]
    metrics = result["metrics"]
    assert {"accuracy", "f1", "precision", "recall", "top5_accuracy"} <= set(metrics)
    assert len(metrics["confusion_matrix"]) == 6
    started = next(e for e in events if e["type"] == "started")
    assert started["n_train"] + started["n_validation"] == 48
    assert 0 < started["trainable_parameters"] < started["total_parameters"]
    exported = Path(spec["output_dir"]) / "model"
    assert (exported / "preprocessor_config.json").is_file()
    # the download's loading code: the base with a head of the labels' size, then the adapter
    base = AutoModelForImageClassification.from_pretrained(
        tiny_vit, num_labels=6, ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, exported).eval()
    pixels = torch.rand(2, 3, 32, 32)
    assert model(pixel_values=pixels).logits.shape == (2, 6)
    # the head was saved whole with the adapter, and it is not the fresh one
    fresh = AutoModelForImageClassification.from_pretrained(
        tiny_vit, num_labels=6, ignore_mismatched_sizes=True
    )
    head: Any = getattr(model.base_model.model, "classifier")  # noqa: B009
    assert not torch.allclose(head.modules_to_save["default"].weight, fresh.classifier.weight)


@pytest.mark.parametrize(
    "training_type",
    [{"type": "full"}, {"type": "freeze", "trainable_layers": 0}, LORA],
    ids=["full", "freeze-head-only", "lora-convolutions"],
)
def test_resnet_recipes(tmp_path: Path, tiny_resnet: Path, training_type: dict[str, Any]) -> None:
    spec = image_spec(tmp_path, tiny_resnet, training_type, augmentation=False)
    events: list[dict[str, Any]] = []
    result = train(spec, events.append)
    assert result["type"] == "succeeded", events[-1]
    started = next(e for e in events if e["type"] == "started")
    if training_type["type"] == "freeze":
        # the head alone: 16 features x 3 labels + 3
        assert started["trainable_parameters"] == 16 * 3 + 3
    exported = Path(spec["output_dir"]) / "model"
    if training_type["type"] == "full":
        reloaded = AutoModelForImageClassification.from_pretrained(exported)
        assert reloaded.config.id2label == {0: "0", 1: "1", 2: "2"}


def test_augmentation_is_seeded_by_the_epoch_not_the_global_rng() -> None:
    image = Image.new("RGB", (40, 30))
    collator = MediaCollator("image", None, augment=True, train_features=[], seed=4)
    collator.epoch = 1
    names = [f"{i}.png" for i in range(6)]
    first = [random_resized_crop(image, collator.generator(name)).size for name in names]
    torch.manual_seed(123)  # what a resumed job's global RNG may be at: it does not matter
    again = [random_resized_crop(image, collator.generator(name)).size for name in names]
    assert again == first
    assert all(0 < w <= 40 and 0 < h <= 30 for w, h in first)
    collator.epoch = 2
    later = [random_resized_crop(image, collator.generator(name)).size for name in names]
    assert later != first


def test_top_k_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]).numpy()
    assert top_k_accuracy(scores, torch.tensor([2, 2]).numpy(), 2) == 0.5
    assert top_k_accuracy(scores, torch.tensor([1, 0]).numpy(), 1) == 1.0


def test_evaluations_name_the_misclassified_validation_pictures(
    tmp_path: Path, tiny_resnet: Path
) -> None:
    # an all but untrained model (a tiny learning rate, one epoch) gets several wrong
    spec = image_spec(
        tmp_path, tiny_resnet, {"type": "full"}, n_epochs=1, learning_rate=1e-7,
        augmentation=False,
    )  # fmt: skip
    events: list[dict[str, Any]] = []
    result = train(spec, events.append)
    assert result["type"] == "succeeded", events[-1]
    metrics = result["metrics"]
    wrong = metrics["misclassified"]
    matrix = metrics["confusion_matrix"]
    off_diagonal = sum(n for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j)
    assert off_diagonal > 0, matrix
    assert len(wrong) == min(off_diagonal, 8)
    evaluations = [e for e in events if e["type"] == "eval"]
    assert evaluations[-1]["misclassified"] == wrong  # recorded as the evaluation's figure
    assert [w["score"] for w in wrong] == sorted((w["score"] for w in wrong), reverse=True)
    # each is a validation picture whose folder is its true label, and the exported model
    # (the final one, which that evaluation ran on) truly predicts the other label for it
    exported = Path(spec["output_dir"]) / "model"
    # the file names stay out of what travels with the model; the figures do not
    manifest = json.loads((exported / "tunery.json").read_text())
    assert "misclassified" not in manifest["metrics"]
    assert manifest["metrics"]["confusion_matrix"] == matrix
    model = AutoModelForImageClassification.from_pretrained(exported).eval()
    processor = AutoImageProcessor.from_pretrained(exported)
    archive = folder_zip(tmp_path / "again.zip", digit_images(8, range(3)))
    with zipfile.ZipFile(archive) as opened, torch.no_grad():
        names = [info.filename for info in opened.infolist()]
        for item in wrong:
            assert item["file"].split("/")[0] == item["label"] != item["predicted"]
            assert names[item["index"]] == item["file"]  # the index the samples route serves
            image = load_image(opened.read(item["file"]))
            logits = model(**processor(images=[image], return_tensors="pt")).logits[0]
            probability = torch.softmax(logits, -1)
            assert model.config.id2label[int(probability.argmax())] == item["predicted"]
            assert float(probability.max()) == pytest.approx(item["score"], abs=1e-3)
            assert matrix[int(item["label"])][int(item["predicted"])] > 0

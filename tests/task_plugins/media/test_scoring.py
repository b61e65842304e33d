"""Evaluating an image classifier on a zip: the evaluation child's scores agree with what
the inference service predicts for the same pictures, and a bad predict input is named."""

from __future__ import annotations

import base64
import zipfile
from pathlib import Path
from typing import Any, cast

import pytest

from app.storage import ArtifactStore
from tests.support.media import digit_images, folder_zip
from tests.support.models import build_tiny_resnet
from worker.evaluation.run import evaluate
from worker.inference.loading import ModelSpec
from worker.inference.predictors import Classification, PredictionInputError
from worker.inference.service import InferenceService


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a head of its own (5 labels): every load of it gives the same model
    return build_tiny_resnet(tmp_path_factory.mktemp("resnet"))


def test_scores_match_the_served_predictions(resnet: Path, tmp_path: Path) -> None:
    pictures = digit_images(3, (0, 1))
    archive = folder_zip(tmp_path / "eval.zip", pictures)
    store = ArtifactStore(f"file://{tmp_path / 'artifacts'}", tmp_path / "cache")
    model = {"key": "base:resnet", "task": "image-classification", "base_model_dir": str(resnet)}
    result = evaluate(
        {
            "model": model,
            "file": {"path": str(archive), "filename": archive.name},
            "storage_url": store.url,
            "cache_dir": str(tmp_path / "cache"),
            "result_path": str(tmp_path / "result.json"),
        }
    )
    metrics = result["metrics"]
    # the base's head says LABEL_0..LABEL_4: the digits' labels are all unknown to it
    assert metrics["unknown_labels"] == ["0", "1"] and metrics["accuracy"] == 0.0
    assert metrics["loss"] is None

    service = InferenceService(store)
    with zipfile.ZipFile(archive) as opened:
        names = sorted(n for n in opened.namelist() if not n.endswith("/"))
        inputs: list[Any] = [{"image": base64.b64encode(opened.read(n)).decode()} for n in names]
    served = cast(list[Classification], service.predict(ModelSpec(**model), inputs, {}))
    predicted = [metrics["labels"].index(p["label"]) for p in served]
    confusion = [[0] * 7 for _ in range(7)]
    for name, guess in zip(names, predicted, strict=True):
        confusion[metrics["labels"].index(name.split("/")[0])][guess] += 1
    assert metrics["confusion_matrix"] == confusion

    with pytest.raises(PredictionInputError, match=r"^inputs\[1\]: an image-classification"):
        service.predict(ModelSpec(**model), [inputs[0], {"audio": "AAAA"}], {})
    with pytest.raises(PredictionInputError, match=r"^inputs\[0\]\.image: not a readable image"):
        service.predict(ModelSpec(**model), [{"image": base64.b64encode(b"GIF").decode()}], {})

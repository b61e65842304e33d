"""Image and audio classification over HTTP against live servers: upload a zip -> job ->
metrics -> deploy -> predict (base64 and data: URLs, a bad input named by index) ->
download -> load with transformers + peft and get the served scores back.

Runs embedded (`tunery serve`: SQLite + filesystem broker) and, where they are reachable,
as separate api/worker/inference processes on Postgres + Redis.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import build_parser
from tests.e2e.test_walk import deploy, run_job, upload
from tests.support import backends, live
from tests.support.media import digit_images, folder_zip, metadata_zip, tones
from tests.support.models import build_tiny_vit, build_tiny_wav2vec2
from tunery_client.api import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def media_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media-models")
    build_tiny_vit(root / "tiny-vit")
    build_tiny_wav2vec2(root / "tiny-wav2vec2")
    return root


@pytest.fixture(scope="module")
def server(
    module_backend: backends.Backend,
    tmp_path_factory: pytest.TempPathFactory,
    media_models: Path,
) -> Iterator[live.LiveServer]:
    """One live server per backend for the image and the audio walk (each uploads, trains
    and deploys its own)."""
    data_dir = tmp_path_factory.mktemp(f"media-{module_backend.name}") / "data"
    with live.for_backend(module_backend, data_dir, media_models) as srv:
        yield srv


def _hyperparameters(**more: Any) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": more}}


def _download_adapter(client: httpx.Client, name: str, target: Path) -> Path:
    download = client.get(f"/v1/models/{name}/content", params={"format": "adapter"})
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    (adapter_dir,) = list(target.iterdir())
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert (adapter_dir / "preprocessor_config.json").is_file()
    readme = (adapter_dir / "README.md").read_text()
    assert "AutoImageProcessor" in readme or "AutoFeatureExtractor" in readme
    return adapter_dir


def _cli(client: httpx.Client, *argv: str) -> int:
    """`tunery ARGV` in-process, against the live server."""
    args = build_parser().parse_args(list(argv))
    return int(args.handler(Client(api_key="", http=client), args))


def test_image_walk(
    server: live.LiveServer,
    tmp_path: Path,
    media_models: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pictures = digit_images(per_class=12, classes=range(3))
    archive = folder_zip(tmp_path / "digits.zip", pictures, top="digits/")
    with server.client() as client:
        models = client.get("/v1/models").json()["data"]
        assert {"id": "tiny-vit", "task": "image-classification"}.items() <= next(
            m for m in models if m["id"] == "tiny-vit"
        ).items()

        file = upload(client, archive)
        assert file["status"] == "processed", file
        assert file["format"] == "image-classification"
        assert file["stats"]["labels"] == {"0": 12, "1": 12, "2": 12}
        listed = client.get("/v1/files").json()["data"]
        assert [f["format"] for f in listed if f["id"] == file["id"]] == ["image-classification"]

        job = run_job(
            client,
            server,
            {
                "model": "tiny-vit",
                "training_file": file["id"],
                "seed": 5,
                "suffix": "digits",
                "method": _hyperparameters(n_epochs=4, batch_size=8, learning_rate=1e-2),
                "training_type": {"type": "lora", "r": 8, "alpha": 16},
            },
        )
        assert job["task"] == "image-classification"
        assert job["hyperparameters"]["augmentation"] is True
        metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()
        assert len(metrics["evaluations"]) == 4
        last = metrics["evaluations"][-1]
        for key in ("eval_loss", "accuracy", "precision", "recall", "f1", "confusion_matrix"):
            assert key in last, last

        name = job["fine_tuned_model"]
        dep = deploy(client, name)
        samples = [pictures["0"][0], pictures["1"][0], pictures["2"][0]]
        inputs: list[dict[str, str]] = [
            {"image": base64.b64encode(samples[0]).decode()},
            {"image": "data:image/png;base64," + base64.b64encode(samples[1]).decode()},
            {"image": base64.b64encode(samples[2]).decode()},
        ]
        answer = client.post(f"/v1/deployments/{dep}/predict", json={"inputs": inputs})
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        assert [set(p) for p in served] == [{"label", "score", "scores"}] * 3
        assert set(served[0]["scores"]) == {"0", "1", "2"}

        bad = client.post(
            f"/v1/deployments/{dep}/predict",
            json={"inputs": [inputs[0], {"image": base64.b64encode(b"not a picture").decode()}]},
        )
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["message"].startswith("inputs[1].image: not a readable image")
        wrong_kind = client.post(f"/v1/deployments/{dep}/predict", json={"inputs": ["a text"]})
        assert wrong_kind.status_code == 400, wrong_kind.text
        assert "inputs[0]" in wrong_kind.json()["error"]["message"]

        picture = tmp_path / "zero.png"
        picture.write_bytes(samples[0])
        assert _cli(client, "predict", dep, "--image", str(picture)) == 0
        label, score, shown = capsys.readouterr().out.strip().split("\t")
        assert (label, shown) == (served[0]["label"], str(picture))
        assert float(score) == pytest.approx(served[0]["score"], abs=1e-3)

        adapter_dir = _download_adapter(client, name, tmp_path / "export")
    _check_image_adapter(media_models / "tiny-vit", adapter_dir, samples, served)


def _check_image_adapter(
    base_dir: Path, adapter_dir: Path, samples: list[bytes], served: list[dict]
) -> None:
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    labels = json.loads((adapter_dir / "tunery.json").read_text())["labels"]
    base = AutoModelForImageClassification.from_pretrained(
        base_dir, num_labels=len(labels), ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    processor = AutoImageProcessor.from_pretrained(adapter_dir)
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in samples]
    with torch.inference_mode():
        probs = model(**processor(images=images, return_tensors="pt")).logits.softmax(-1)
    for row, prediction in zip(probs, served, strict=True):
        expected = torch.tensor([prediction["scores"][label] for label in labels])
        assert torch.allclose(row, expected, atol=1e-4), (row, expected)


def test_audio_walk(server: live.LiveServer, tmp_path: Path, media_models: Path) -> None:
    sounds = tones(per_class=8)
    archive = metadata_zip(tmp_path / "tones.zip", sounds, suffix=".wav")
    with server.client() as client:
        file = upload(client, archive)
        assert file["status"] == "processed", file
        assert file["format"] == "audio-classification"
        assert file["stats"]["sample_rates"] == [16000]
        job = run_job(
            client,
            server,
            {
                "model": "tiny-wav2vec2",
                "training_file": file["id"],
                "seed": 5,
                "method": _hyperparameters(n_epochs=2, batch_size=4),
                "training_type": {"type": "full"},
            },
        )
        assert job["task"] == "audio-classification"
        assert job["hyperparameters"]["freeze_feature_encoder"] is True
        name = job["fine_tuned_model"]
        clip = sounds["high"][0]
        answer = client.post(
            "/v1/predict",
            json={"model": name, "inputs": [{"audio": base64.b64encode(clip).decode()}]},
        )
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        assert set(prediction["scores"]) == {"high", "low"}
        bad = client.post("/v1/predict", json={"model": name, "inputs": [{"audio": "%%%"}]})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["message"].startswith("inputs[0].audio: not valid base64")

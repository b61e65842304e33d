"""Audio classification training on a tiny Wav2Vec2 with sine tones: the feature encoder
stays frozen by default, long clips are cropped, and other rates are resampled."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from task_plugins.media.decode import load_audio
from task_plugins.media.training import MAX_CLIP_SECONDS, crop_clip
from tests.support.media import folder_zip, tones
from tests.support.models import build_tiny_wav2vec2
from worker.training.run import train


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wav2vec2(tmp_path_factory.mktemp("tiny-wav2vec2"))


def audio_spec(tmp_path: Path, base: Path, **hp: Any) -> dict[str, Any]:
    # 8 kHz clips: the 16 kHz model gets them resampled
    tmp_path.mkdir(parents=True, exist_ok=True)
    archive = folder_zip(tmp_path / "tones.zip", tones(6, rate=8_000), suffix=".wav")
    out = tmp_path / "work"
    out.mkdir()
    return {
        "job_id": "ftjob-audio",
        "task": "audio-classification",
        "base_model_dir": str(base),
        "train_file": {"path": str(archive), "filename": archive.name},
        "output_dir": str(out),
        "events_path": str(out / "events.jsonl"),
        "seed": 3,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, **hp},
        "training_type": {"type": "full"},
    }


def trainable(events: list[dict[str, Any]]) -> int:
    return int(next(e for e in events if e["type"] == "started")["trainable_parameters"])


def test_the_feature_encoder_is_frozen_unless_asked(tmp_path: Path, tiny_wav2vec2: Path) -> None:
    frozen: list[dict[str, Any]] = []
    assert train(audio_spec(tmp_path / "a", tiny_wav2vec2), frozen.append)["type"] == "succeeded"
    free: list[dict[str, Any]] = []
    spec = audio_spec(tmp_path / "b", tiny_wav2vec2, freeze_feature_encoder=False)
    assert train(spec, free.append)["type"] == "succeeded"
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(tiny_wav2vec2, num_labels=2)
    encoder = sum(p.numel() for p in model.wav2vec2.feature_extractor.parameters())
    assert trainable(free) - trainable(frozen) == encoder > 0


def test_long_clips_are_cropped_and_rates_resampled() -> None:
    rate = 16_000
    long = np.arange(int(rate * (MAX_CLIP_SECONDS + 5)), dtype=np.float32)
    assert len(crop_clip(long, rate, None)) == MAX_CLIP_SECONDS * rate
    assert crop_clip(long, rate, None)[0] == 0
    window = crop_clip(long, rate, torch.Generator().manual_seed(1))
    assert len(window) == MAX_CLIP_SECONDS * rate and window[0] > 0
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((8_000, 2), dtype=np.float32), 8_000, format="FLAC")
    samples = load_audio(buffer.getvalue(), rate)
    assert samples.shape == (16_000,) and samples.dtype == np.float32

"""Real pictures and sounds made on the spot, zipped in either layout: scikit-learn's bundled
digits (8x8 scans of handwritten digits) upscaled to RGB, and sine tones per class."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def digit_images(
    per_class: int, classes: Iterable[int] = (0, 1, 2), size: int = 32
) -> dict[str, list[bytes]]:
    """PNG bytes of real handwritten digits, `per_class` of each class, keyed by label."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out: dict[str, list[bytes]] = {}
    for label in classes:
        picked = digits.images[digits.target == label][:per_class]
        pictures = []
        for pixels in picked:
            gray = (pixels / 16.0 * 255).astype(np.uint8)
            image = Image.fromarray(gray, mode="L").resize((size, size)).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pictures.append(buffer.getvalue())
        out[str(label)] = pictures
    return out


def tones(
    per_class: int,
    labels: Iterable[str] = ("low", "high"),
    rate: int = 16_000,
    seconds: float = 0.5,
) -> dict[str, list[bytes]]:
    """WAV bytes of noisy sine tones: a low and a high pitch class (a few pitches each)."""
    import soundfile

    rng = np.random.default_rng(0)
    base = {"low": 220.0, "high": 1760.0, "mid": 660.0}
    out: dict[str, list[bytes]] = {}
    t = np.arange(int(rate * seconds)) / rate
    for label in labels:
        sounds = []
        for index in range(per_class):
            pitch = base[label] * (1 + 0.05 * index)
            wave = 0.5 * np.sin(2 * math.pi * pitch * t) + 0.05 * rng.standard_normal(t.size)
            buffer = io.BytesIO()
            soundfile.write(buffer, wave.astype(np.float32), rate, format="WAV")
            sounds.append(buffer.getvalue())
        out[label] = sounds
    return out


def folder_zip(
    path: Path, files: dict[str, list[bytes]], suffix: str = ".png", top: str = ""
) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for label, items in files.items():
            for index, data in enumerate(items):
                archive.writestr(f"{top}{label}/{index}{suffix}", data)
    return path


def metadata_zip(path: Path, files: dict[str, list[bytes]], suffix: str = ".png") -> Path:
    rows = []
    with zipfile.ZipFile(path, "w") as archive:
        for label, items in files.items():
            for index, data in enumerate(items):
                name = f"data/{label}_{index}{suffix}"
                archive.writestr(name, data)
                rows.append({"file_name": name, "label": label})
        archive.writestr("metadata.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return path

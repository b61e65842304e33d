"""Bytes to model inputs' raw material: an RGB picture, or mono samples at a given rate.

Torch-free (Pillow, soundfile, soxr, numpy): the trainer's collator, the inference server
and the evaluation child share these, so a picture is read the same way everywhere.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Any

import numpy as np

from task_plugins.media.archive import MAX_IMAGE_PIXELS

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def from_base64(value: str) -> bytes:
    """The bytes of base64 text or a `data:<type>;base64,` URL; raises ValueError."""
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    elif text.startswith("data:"):
        raise ValueError("a data: URL must be base64-encoded (data:<type>;base64,<data>)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({exc})") from None
    if not data:
        raise ValueError("empty")
    return data


def load_image(data: bytes) -> Any:
    """An RGB PIL image; raises ValueError for anything Pillow cannot decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{image.width}x{image.height} pixels is over the limit of {MAX_IMAGE_PIXELS}"
                )
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image (jpg, png, webp, bmp): {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ValueError(str(exc)) from None


def load_audio(data: bytes, rate: int) -> np.ndarray:
    """Mono float32 samples at `rate` (mixed down, resampled with soxr); raises ValueError."""
    import soundfile
    import soxr

    try:
        samples, source_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"not a readable sound (wav, flac, ogg): {exc}") from None
    if samples.shape[0] == 0:
        raise ValueError("the sound holds no samples")
    mono = samples.mean(axis=1)
    if source_rate != rate:
        mono = soxr.resample(mono, source_rate, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)

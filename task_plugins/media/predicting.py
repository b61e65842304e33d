"""Image and audio classification in the inference server (and the evaluation child).

`prepare` decodes one request's inputs (base64 or data: URLs) on the batcher's thread, and
names the index of an input it cannot read; `class_probabilities` runs the processor and
the model on the decoded inputs of several requests at once (the plugins' predictor hooks
are these, per modality). `classify` is the round trip for a plain model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from task_plugins.media.archive import Modality
from task_plugins.media.decode import from_base64, load_audio, load_image
from task_plugins.media.training import audio_inputs, crop_clip
from worker.inference.predictors import (
    Classification,
    PredictionInputError,
    device_of,
    to_classification,
)

MODALITIES: dict[str, Modality] = {
    "image-classification": "image",
    "audio-classification": "audio",
}


def modality_of(task: str) -> Modality:
    return MODALITIES[task]


def decode_input(item: Any, modality: Modality, index: int, processor: Any) -> Any:
    """One input item → a PIL image or mono samples at the processor's rate."""
    hint = f'{{"{modality}": "<base64 or data: URL>"}}'
    if not isinstance(item, Mapping) or set(item) != {modality}:
        raise PredictionInputError(
            f"inputs[{index}]: an {modality} classification model takes items {hint}",
            code="unsupported_input",
        )
    value = item[modality]
    if not isinstance(value, str):
        raise PredictionInputError(f"inputs[{index}].{modality} must be a string: {hint}")
    try:
        data = from_base64(value)
        if modality == "image":
            return load_image(data)
        rate = int(processor.sampling_rate)
        return crop_clip(load_audio(data, rate), rate, None)
    except ValueError as exc:
        raise PredictionInputError(f"inputs[{index}].{modality}: {exc}") from None


def prepare(processor: Any, task: str, inputs: Sequence[Any]) -> list[Any]:
    modality = modality_of(task)
    return [decode_input(item, modality, index, processor) for index, item in enumerate(inputs)]


def prepare_images(processor: Any, inputs: Sequence[Any], config: Any) -> list[Any]:
    """The inference server's prepare hook for image models: PIL images."""
    return prepare(processor, "image-classification", inputs)


def prepare_clips(processor: Any, inputs: Sequence[Any], config: Any) -> list[Any]:
    """The inference server's prepare hook for audio models: mono samples at the
    processor's rate."""
    return prepare(processor, "audio-classification", inputs)


def image_probabilities(
    model: Any, processor: Any, decoded: Sequence[Any], pad_id: int, extra: Mapping[str, Any]
) -> torch.Tensor:
    """The inference server's forward hook for image models."""
    return class_probabilities(model, processor, "image-classification", decoded, extra)


def audio_probabilities(
    model: Any, processor: Any, decoded: Sequence[Any], pad_id: int, extra: Mapping[str, Any]
) -> torch.Tensor:
    """The inference server's forward hook for audio models."""
    return class_probabilities(model, processor, "audio-classification", decoded, extra)


def class_probabilities(
    model: Any,
    processor: Any,
    task: str,
    decoded: Sequence[Any],
    extra: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Softmax over the labels, one row per decoded input (float32, on the CPU)."""
    if modality_of(task) == "image":
        features = processor(images=list(decoded), return_tensors="pt")
    else:
        rate = int(processor.sampling_rate)
        features = audio_inputs(processor, list(decoded), rate)
    device = device_of(model)
    dtype = next(model.parameters()).dtype
    inputs = {
        name: value.to(device, dtype=dtype if value.is_floating_point() else value.dtype)
        for name, value in features.items()
    }
    with torch.inference_mode():
        out = model(**inputs, **(extra or {}))
    return out.logits.float().softmax(dim=-1).cpu()


def classify(
    model: Any,
    processor: Any,
    task: str,
    inputs: Sequence[Any],
    labels: Sequence[str],
    top_k: int | None = None,
    batch_size: int = 16,
) -> list[Classification]:
    """Classify {"image": ...} or {"audio": ...} items with a plain (unshared) model."""
    decoded = prepare(processor, task, inputs)
    results: list[Classification] = []
    for start in range(0, len(decoded), batch_size):
        probs = class_probabilities(model, processor, task, decoded[start : start + batch_size])
        results += [to_classification(p.tolist(), labels, top_k) for p in probs]
    return results

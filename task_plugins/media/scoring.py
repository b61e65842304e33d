"""Score a loaded image or audio classifier on rows of a zip upload: the classification
figures (the trainer's definitions, top-5 included over 5 classes) and the mean
cross-entropy on rows whose label the model knows. Pure ML: no HTTP, Celery or SQL."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from task_plugins.media.decode import load_audio, load_image
from task_plugins.media.predicting import class_probabilities, modality_of
from task_plugins.media.training import TOP_K, crop_clip, top_k_accuracy
from task_plugins.text_classification.metrics import classification_metrics
from worker.evaluation.scoring import BATCH_SIZE
from worker.inference.loading import LoadedModel

Row = dict[str, Any]


def score(model: LoadedModel, rows: Sequence[Row]) -> dict[str, Any]:
    known = list(model.labels or [])
    truth = [str(row["label"]) for row in rows]
    unknown = sorted({label for label in truth if label not in known})
    labels = known + unknown
    index = {label: i for i, label in enumerate(labels)}
    task = model.spec.task
    processor = model.tokenizer
    archives: dict[str, zipfile.ZipFile] = {}
    probs: list[torch.Tensor] = []
    try:
        for start in range(0, len(rows), BATCH_SIZE):
            decoded = [
                _decode(archives, row, task, processor) for row in rows[start : start + BATCH_SIZE]
            ]
            with model.shared.running([model.adapter_name]) as (module, extra):
                probs.append(class_probabilities(module, processor, task, decoded, extra))
    finally:
        for opened in archives.values():
            opened.close()
    all_probs = torch.cat(probs)
    predicted = all_probs.argmax(dim=-1).numpy()
    true = np.array([index[label] for label in truth])
    metrics = classification_metrics(predicted, true, labels)
    if len(known) > TOP_K:
        metrics["top5_accuracy"] = top_k_accuracy(all_probs.numpy(), true, TOP_K)
    scorable = true < len(known)
    loss = None
    if scorable.any():
        picked = all_probs[torch.from_numpy(scorable), torch.from_numpy(true[scorable])]
        loss = float(-picked.clamp_min(1e-12).log().mean())
    return {**metrics, "loss": loss, "labels": labels, "unknown_labels": unknown}


def _decode(archives: dict[str, zipfile.ZipFile], row: Row, task: str, processor: Any) -> Any:
    path = str(row["archive"])
    opened = archives.get(path)
    if opened is None:
        opened = archives[path] = zipfile.ZipFile(path)
    data = opened.read(str(row["file"]))
    if modality_of(task) == "image":
        return load_image(data)
    rate = int(processor.sampling_rate)
    return crop_clip(load_audio(data, rate), rate, None)

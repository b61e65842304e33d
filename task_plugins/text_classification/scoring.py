"""Score a loaded classifier on rows: accuracy, macro and per-class precision/recall/F1 and
the confusion matrix (the trainer's own definitions), plus the mean cross-entropy on rows
whose label the model knows. Pure ML: no HTTP, Celery or SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from task_plugins.text_classification.metrics import classification_metrics
from worker.evaluation.scoring import BATCH_SIZE
from worker.inference.loading import LoadedModel
from worker.inference.predictors import class_probabilities, encode_texts, max_input_tokens

Row = dict[str, Any]


def score(model: LoadedModel, rows: Sequence[Row]) -> dict[str, Any]:
    known = list(model.labels or [])
    truth_labels = [str(row["label"]) for row in rows]
    # labels the model cannot say still count: as misses, with their support
    unknown = sorted({label for label in truth_labels if label not in known})
    labels = known + unknown
    index = {label: i for i, label in enumerate(labels)}
    shared = model.shared
    pad_id = shared.config.pad_token_id
    if not isinstance(pad_id, int):
        pad_id = model.tokenizer.pad_token_id or 0
    encoded = encode_texts(
        model.tokenizer, [str(row["text"]) for row in rows], max_input_tokens(shared.config)
    )
    probs: list[torch.Tensor] = []
    for start in range(0, len(encoded), BATCH_SIZE):
        with shared.running([model.adapter_name]) as (module, extra):
            probs.append(
                class_probabilities(module, encoded[start : start + BATCH_SIZE], pad_id, extra)
            )
    all_probs = torch.cat(probs)
    predicted = all_probs.argmax(dim=-1).numpy()
    true = np.array([index[label] for label in truth_labels])
    metrics = classification_metrics(predicted, true, labels)
    scorable = true < len(known)
    loss = None
    if scorable.any():
        picked = all_probs[torch.from_numpy(scorable), torch.from_numpy(true[scorable])]
        loss = float(-picked.clamp_min(1e-12).log().mean())
    return {
        **metrics,
        "loss": loss,
        "labels": labels,
        "unknown_labels": unknown,
    }

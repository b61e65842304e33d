"""Image and audio classification training (the worker's half; imports torch).

The rows name a member of an uploaded zip; nothing is decoded ahead of time. The collator
reads each batch's files straight from their archives, augments the training rows (a fresh
random crop and flip per epoch), and runs the model's own processor. The augmentation
draws from a generator seeded by (job seed, epoch, file), not from torch's global RNG nor
the step: the Trainer collates the first batch after a resume before it restores the
checkpoint's RNG state, and accelerate's data loader collates one batch ahead, so either
would shift by a batch and a resumed job would not match an uninterrupted one. Labels, the
validation checks and the metrics are text classification's.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import TaskType
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from app.failures import Failure
from app.jobs.spec import TrainSpec
from task_plugins.base import Row
from task_plugins.media.archive import Modality
from task_plugins.media.decode import load_audio, load_image
from task_plugins.text_classification.metrics import ClassificationMetrics
from task_plugins.text_classification.training import TextClassificationTrainer
from worker.training.features import Encoded
from worker.training.plugin import SAFE_LOAD, ComputeMetrics, Note, PreprocessLogits

# peft's image-classification guide adapts attention's query and value and trains the head
# in full; convolutional nets get their convolutions adapted instead. Attention's names are
# given both ways: transformers 5 renamed ViT's query/value to q_proj/v_proj (peft matches
# the names a model has and ignores the others).
_QUERY_VALUE = ["query", "value", "q_proj", "v_proj"]
LORA_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(
        ("vit", "deit", "dinov2", "beit", "data2vec-vision", "vit_msn", "swin", "swinv2"),
        _QUERY_VALUE,
    ),
    **{key: ["convolution"] for key in ("resnet", "regnet", "mobilenet_v1", "mobilenet_v2")},
    **{key: ["pwconv1", "pwconv2"] for key in ("convnext", "convnextv2")},
    "efficientnet": ["expand_conv", "project_conv"],
    **dict.fromkeys(
        ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew"),
        _QUERY_VALUE,
    ),
    "audio-spectrogram-transformer": _QUERY_VALUE,
}
# the new or resized head (and audio's projector before it): trained whole, saved in adapters
HEAD_MODULES = ["classifier", "projector"]
# Random resized crop (torchvision's defaults) and a horizontal flip half the time.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Audio clips longer than this are cropped: at random in training, from the start otherwise.
MAX_CLIP_SECONDS = 10.0
TOP_K = 5
# misclassified validation examples an evaluation names (the most confident mistakes first)
MAX_MISCLASSIFIED = 8


class MediaClassificationTrainer(TextClassificationTrainer):
    """Shared by image and audio classification; a subclass names the modality and classes."""

    modality: Modality
    peft_task_type: TaskType | None = None
    counts_tokens = False
    # transformers' model_type -> class tables for the task
    mapping_names: dict[str, Any]
    auto_model: Any
    what: str

    def check_base_model(self, config: PretrainedConfig, base_dir: Path) -> None:
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in self.mapping_names:
            raise Failure(
                "invalid_base_model",
                f"{base_dir.name} (model_type {model_type!r}) has no {self.what}-classification "
                f"head in transformers; choose {self.examples}",
                "model",
            )

    @property
    def examples(self) -> str:
        return (
            "ViT, DeiT, ResNet, ConvNeXt, Swin"
            if self.modality == "image"
            else ("Wav2Vec2, HuBERT, WavLM or AST")
        )

    def load_processor(self, base_dir: Path, formats: set[str], note: Note) -> Any:
        from transformers import AutoFeatureExtractor, AutoImageProcessor

        loader = AutoImageProcessor if self.modality == "image" else AutoFeatureExtractor
        try:
            return loader.from_pretrained(base_dir, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise Failure(
                "invalid_base_model",
                f"cannot load the base model's {self.what} processor "
                f"(preprocessor_config.json): {exc}",
                "model",
            ) from exc

    def encode(
        self, spec: TrainSpec, rows: list[Row], processor: Any, labels: list[str], max_length: int
    ) -> Encoded:
        ids = {label: index for index, label in enumerate(labels)}
        return Encoded(
            [
                {
                    "archive": r["archive"],
                    "file": r["file"],
                    "index": r.get("index"),
                    "labels": ids[r["label"]],
                }
                for r in rows
            ]
        )

    def load_model(
        self, weights_dir: Path, labels: list[str], extra: dict[str, Any]
    ) -> PreTrainedModel:
        model: PreTrainedModel = self.auto_model.from_pretrained(
            weights_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
            **SAFE_LOAD,
            **extra,
        )
        return model

    def lora_targets(self, model_type: str) -> str | list[str] | None:
        return LORA_TARGETS.get(model_type, "all-linear")

    def lora_modules_to_save(self, model: nn.Module) -> list[str]:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        return [name for name in HEAD_MODULES if name in names]

    def prepare_model(self, model: nn.Module, spec: TrainSpec, note: Note) -> None:
        return None

    def collator(
        self,
        spec: TrainSpec,
        model: nn.Module,
        processor: Any,
        train_set: Encoded,
        cuda: bool,
        note: Note,
    ) -> Callable[[list[dict[str, Any]]], Any]:
        return MediaCollator(
            self.modality,
            processor,
            augment=spec.hyperparameters.augmentation,
            train_features=train_set.features,
            seed=spec.seed,
        )

    def metrics(
        self, labels: list[str], validation: Encoded | None = None
    ) -> tuple[ComputeMetrics, PreprocessLogits | None]:
        return MediaMetrics(labels, validation.features if validation else None), None


class MediaCollator(TrainerCallback):
    """Rows naming zip members → the processor's tensors and the label ids.

    The Trainer uses one collator for training and evaluation; the training rows are known
    by identity (the same dicts the training dataset hands out), and only they are augmented.
    It is also a callback (worker/training/run.py adds a collator that is one), to know the
    epoch its augmentation is seeded by.
    """

    def __init__(
        self,
        modality: Modality,
        processor: Any,
        augment: bool,
        train_features: list[dict[str, Any]],
        seed: int = 0,
    ) -> None:
        self.modality = modality
        self.processor = processor
        self.augment = augment
        self.train_ids = {id(features) for features in train_features}
        self.seed = seed
        self.epoch = 0
        self._archives: dict[str, zipfile.ZipFile] = {}

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # a resumed job starts inside an epoch (state.epoch 1.44: epoch 1)
        self.epoch = math.floor((state.epoch or 0.0) + 1e-6)

    def generator(self, member: str) -> torch.Generator:
        """The draws of one file's augmentation in this epoch."""
        key = f"{self.seed}:{self.epoch}:{member}".encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    def read(self, archive: str, member: str) -> bytes:
        opened = self._archives.get(archive)
        if opened is None:
            opened = self._archives[archive] = zipfile.ZipFile(archive)
        return opened.read(member)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        generators = [
            self.generator(features["file"])
            if self.augment and id(features) in self.train_ids
            else None
            for features in batch
        ]
        raw = [self.read(features["archive"], features["file"]) for features in batch]
        if self.modality == "image":
            images = [
                random_resized_crop(load_image(data), rng) if rng is not None else load_image(data)
                for data, rng in zip(raw, generators, strict=True)
            ]
            out = dict(self.processor(images=images, return_tensors="pt"))
        else:
            rate = int(self.processor.sampling_rate)
            clips = [
                crop_clip(load_audio(data, rate), rate, rng)
                for data, rng in zip(raw, generators, strict=True)
            ]
            out = dict(audio_inputs(self.processor, clips, rate))
        out["labels"] = torch.tensor([features["labels"] for features in batch], dtype=torch.long)
        return out


def audio_inputs(processor: Any, clips: list[np.ndarray], rate: int) -> Any:
    kwargs: dict[str, Any] = {"sampling_rate": rate, "return_tensors": "pt", "padding": True}
    if getattr(processor, "return_attention_mask", False):
        kwargs["return_attention_mask"] = True
    return processor(clips, **kwargs)


def random_resized_crop(image: Any, rng: torch.Generator | None = None) -> Any:
    """A random crop of 8-100% of the area at a 3/4-4/3 aspect ratio (torchvision's
    RandomResizedCrop, before the processor resizes), flipped left-right half the time."""
    from PIL import Image

    width, height = image.size
    area = width * height
    box = (0, 0, width, height)
    for _ in range(10):
        target = area * _uniform(*CROP_SCALE, rng=rng)
        ratio = math.exp(_uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), rng=rng))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=rng))
            top = int(torch.randint(0, height - h + 1, (1,), generator=rng))
            box = (left, top, left + w, top + h)
            break
    cropped = image.crop(box)
    if float(torch.rand((), generator=rng)) < 0.5:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return cropped


def crop_clip(samples: np.ndarray, rate: int, rng: torch.Generator | None) -> np.ndarray:
    """At most MAX_CLIP_SECONDS of a clip: a window drawn from `rng` (training), else the
    start."""
    limit = int(MAX_CLIP_SECONDS * rate)
    if len(samples) <= limit:
        return samples
    start = 0
    if rng is not None:
        start = int(torch.randint(0, len(samples) - limit + 1, (1,), generator=rng))
    return samples[start : start + limit]


def _uniform(low: float, high: float, rng: torch.Generator | None = None) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


class MediaMetrics(ClassificationMetrics):
    """The classification figures, plus top-5 accuracy when there are more than 5 classes,
    and a few misclassified validation examples (`validation`: its rows in the Trainer's
    evaluation order, which is the dataset's: sequential, and gathered in order)."""

    def __init__(self, labels: list[str], validation: list[dict[str, Any]] | None = None) -> None:
        super().__init__(labels)
        self.validation = validation or []

    def __call__(self, prediction: Any) -> dict[str, Any]:
        metrics = super().__call__(prediction)
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        scores = np.asarray(logits, dtype=np.float64)
        true = np.asarray(prediction.label_ids).reshape(-1)
        if len(self.labels) > TOP_K:
            metrics["top5_accuracy"] = top_k_accuracy(scores, true, TOP_K)
        if len(self.validation) == len(true):
            metrics["misclassified"] = misclassified(scores, true, self.validation, self.labels)
        return metrics


def misclassified(
    logits: np.ndarray,
    true: np.ndarray,
    rows: list[dict[str, Any]],
    labels: list[str],
    limit: int = MAX_MISCLASSIFIED,
) -> list[dict[str, Any]]:
    """The validation rows the model got wrong, the most confident mistakes first: each
    one's file in the archive (and its index there), true and predicted label, and the
    probability the model gave its prediction."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    predicted = probabilities.argmax(axis=-1)
    wrong = np.flatnonzero(predicted != true)
    confidence = probabilities[wrong, predicted[wrong]]
    picked = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return [
        {
            "file": rows[i]["file"],
            "index": rows[i].get("index"),
            "label": labels[int(true[i])],
            "predicted": labels[int(predicted[i])],
            "score": round(float(probabilities[i, predicted[i]]), 4),
        }
        for i in picked
    ]


def top_k_accuracy(scores: np.ndarray, true: np.ndarray, k: int) -> float:
    if len(true) == 0:
        return 0.0
    best = np.argsort(-scores, axis=-1)[:, :k]
    return float((best == true[:, None]).any(axis=1).mean())

"""Image classification training: task_plugins/media/training.py with transformers' image
classes."""

from __future__ import annotations

from transformers import AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from task_plugins.image_classification import TASK
from task_plugins.media.training import MediaClassificationTrainer


class ImageClassificationTrainer(MediaClassificationTrainer):
    plugin = TASK
    modality = "image"
    mapping_names = dict(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    auto_model = AutoModelForImageClassification
    what = "image"


TRAINER = ImageClassificationTrainer()

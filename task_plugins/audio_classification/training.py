"""Audio classification training: task_plugins/media/training.py with transformers' audio
classes; the convolutional feature encoder stays frozen unless the job says otherwise."""

from __future__ import annotations

from torch import nn
from transformers import AutoModelForAudioClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES

from app.jobs.spec import TrainSpec
from task_plugins.audio_classification import TASK
from task_plugins.media.training import MediaClassificationTrainer
from worker.training.plugin import Note


class AudioClassificationTrainer(MediaClassificationTrainer):
    plugin = TASK
    modality = "audio"
    mapping_names = dict(MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES)
    auto_model = AutoModelForAudioClassification
    what = "audio"

    def prepare_model(self, model: nn.Module, spec: TrainSpec, note: Note) -> None:
        if not spec.hyperparameters.freeze_feature_encoder:
            return
        # the waveform's convolutional front end: wav2vec2's recipe never fine-tunes it
        for name in ("feature_extractor", "feature_encoder"):
            for path, module in model.named_modules():
                if path.rsplit(".", 1)[-1] == name:
                    module.requires_grad_(False)


TRAINER = AudioClassificationTrainer()

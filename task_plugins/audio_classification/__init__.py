"""Audio classification: a label per sound clip, on Wav2Vec2, HuBERT, WavLM, AST and the
like. Datasets are zip uploads of wav/flac/ogg (task_plugins/media). Torch-free; the
worker's half is in `training`, and task_plugins/media's `scoring` and `predicting`."""

from __future__ import annotations

from task_plugins.base import SUPERVISED, ExportInfo, TaskPlugin
from task_plugins.image_classification import CLASSIFIER_METRICS, media_predictor
from task_plugins.media.kind import AUDIO_ARCHIVE

AUDIO_TYPES = frozenset({
    "wav2vec2", "hubert", "wavlm", "audio-spectrogram-transformer", "data2vec-audio",
    "unispeech", "unispeech-sat", "sew", "sew-d", "wav2vec2-conformer",
})  # fmt: skip

TASK = TaskPlugin(
    name="audio-classification",
    formats={SUPERVISED: (AUDIO_ARCHIVE.name,)},
    format_hint=(
        "a .zip of sounds (wav, flac, ogg) in <label>/<file> folders, or with a "
        "metadata.jsonl or metadata.csv of file_name,label"
    ),
    row_formats=(),
    model_types=AUDIO_TYPES,
    architecture_suffixes=("ForAudioClassification",),
    metrics=CLASSIFIER_METRICS,
    default_batch_size=8,
    base_learning_rates={"lora": 1e-3, "full": 3e-5, "freeze": 1e-3},
    hyperparameters={"augmentation": True, "freeze_feature_encoder": True},
    trainer="task_plugins.audio_classification.training:TRAINER",
    scorer="task_plugins.media.scoring:score",
    predictor=media_predictor("audio"),
    export=ExportInfo(
        auto_class="AutoModelForAudioClassification",
        pipeline_tag="audio-classification",
        labels=True,
        processor_class="AutoFeatureExtractor",
    ),
    file_kinds=(AUDIO_ARCHIVE,),
)

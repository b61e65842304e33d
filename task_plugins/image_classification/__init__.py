"""Image classification: a label per picture, on ViT, DeiT, ResNet, ConvNeXt, EfficientNet,
MobileNet, Swin, DINOv2 and the like. Datasets are zip uploads (task_plugins/media).
Torch-free; the worker's half is in `training`, and task_plugins/media's `scoring` and
`predicting`."""

from __future__ import annotations

from task_plugins.base import SUPERVISED, ExportInfo, MetricSpec, PredictorHook, TaskPlugin
from task_plugins.media.kind import IMAGE_ARCHIVE

IMAGE_TYPES = frozenset({
    "vit", "deit", "resnet", "convnext", "convnextv2", "efficientnet", "mobilenet_v1",
    "mobilenet_v2", "swin", "swinv2", "dinov2", "beit", "data2vec-vision", "regnet", "levit",
    "vit_msn", "bit", "dinat", "focalnet", "poolformer", "pvt", "pvt_v2", "cvt", "hiera",
})  # fmt: skip

_MEDIA = "task_plugins.media.predicting"
# accuracy, macro P/R/F1 as for text; top5_accuracy joins them when there are over 5 classes
CLASSIFIER_METRICS = MetricSpec(
    selectable=("eval_loss", "accuracy", "f1", "precision", "recall"),
    checkpoint={
        name: (name,) for name in ("accuracy", "precision", "recall", "f1", "top5_accuracy")
    },
)


def media_predictor(kind: str) -> PredictorHook:
    return PredictorHook(
        engine="batch",
        prepare=f"{_MEDIA}:prepare_{'images' if kind == 'image' else 'clips'}",
        forward=f"{_MEDIA}:{kind}_probabilities",
        finish="worker.inference.predictors:to_classification",
        output="worker.inference.predictors:Classification",
        parameters=frozenset({"top_k"}),
        inputs=frozenset({kind}),
    )


TASK = TaskPlugin(
    name="image-classification",
    formats={SUPERVISED: (IMAGE_ARCHIVE.name,)},
    format_hint=(
        "a .zip of images (jpg, png, webp, bmp) in <label>/<file> folders, or with a "
        "metadata.jsonl or metadata.csv of file_name,label"
    ),
    row_formats=(),
    model_types=IMAGE_TYPES,
    architecture_suffixes=("ForImageClassification",),
    metrics=CLASSIFIER_METRICS,
    default_batch_size=16,
    # peft's image-classification guide tunes ViT's LoRA at 5e-3; a head alone learns fast
    base_learning_rates={"lora": 5e-3, "full": 5e-5, "freeze": 1e-3},
    hyperparameters={"augmentation": True},
    trainer="task_plugins.image_classification.training:TRAINER",
    scorer="task_plugins.media.scoring:score",
    predictor=media_predictor("image"),
    export=ExportInfo(
        auto_class="AutoModelForImageClassification",
        pipeline_tag="image-classification",
        labels=True,
        processor_class="AutoImageProcessor",
    ),
    file_kinds=(IMAGE_ARCHIVE,),
)

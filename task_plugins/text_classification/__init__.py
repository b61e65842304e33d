"""Text classification: a label per text, on an encoder (BERT, MiniLM) or a decoder with a
sequence-classification head. Torch-free; the worker's half is in `training` and `scoring`."""

from __future__ import annotations

from task_plugins.base import SUPERVISED, ExportInfo, MetricSpec, PredictorHook, TaskPlugin
from task_plugins.text_classification.formats import CLASSIFICATION, CLASSIFICATION_ROWS

# config.json model_type values that are encoders: they classify, they do not generate.
ENCODER_TYPES = frozenset({
    "bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta",
    "mpnet", "albert", "camembert", "modernbert", "xlm", "funnel", "longformer", "ernie",
})  # fmt: skip

_PREDICTORS = "worker.inference.predictors"

TASK = TaskPlugin(
    name="classification",
    formats={SUPERVISED: (CLASSIFICATION,)},
    format_hint='rows {"text": ..., "label": ...} (or CSV with header text,label)',
    row_formats=(CLASSIFICATION_ROWS,),
    model_types=ENCODER_TYPES,
    # a bare encoder ("BertModel") gets a new head
    architecture_suffixes=("ForSequenceClassification", "ForMaskedLM", "Model"),
    metrics=MetricSpec(
        selectable=("eval_loss", "accuracy", "f1", "precision", "recall"),
        checkpoint={name: (name,) for name in ("accuracy", "precision", "recall", "f1")},
    ),
    default_batch_size=16,
    base_learning_rates={"lora": 5e-4, "full": 5e-5, "freeze": 2e-4},
    hyperparameters={},
    trainer="task_plugins.text_classification.training:TRAINER",
    scorer="task_plugins.text_classification.scoring:score",
    predictor=PredictorHook(
        engine="batch",
        prepare=f"{_PREDICTORS}:prepare_texts",
        forward=f"{_PREDICTORS}:text_probabilities",
        finish=f"{_PREDICTORS}:to_classification",
        output=f"{_PREDICTORS}:Classification",
        parameters=frozenset({"top_k"}),
        inputs=frozenset({"text"}),
    ),
    export=ExportInfo(
        auto_class="AutoModelForSequenceClassification",
        pipeline_tag="text-classification",
        labels=True,
    ),
)

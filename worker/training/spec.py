"""The trainer child's input (a spec) and its one way to fail (TrainingFailure).

The spec's shape is pinned in docs/internals.md; it is parsed here once into typed
dataclasses so the rest of the trainer never digs through dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Task = Literal["classification", "causal-lm"]
TASKS: tuple[Task, ...] = ("classification", "causal-lm")
TRAINING_TYPES = ("lora", "qlora", "full", "freeze")
# LoRA and QLoRA train (and export) an adapter; full and freeze a whole model.
ADAPTER_TYPES = frozenset({"lora", "qlora"})
LR_SCHEDULERS = ("linear", "cosine", "constant")
# The metrics a job can pick its best checkpoint (and stop early) by, per task.
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("eval_loss", "accuracy", "f1", "precision", "recall"),
    "causal-lm": ("eval_loss", "perplexity", "token_accuracy"),
}
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})


class TrainingFailure(Exception):
    """A failure the user can act on; reported as a `failed` event with this code."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class DataFile:
    path: Path
    filename: str


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations."""

    patience: int = 3
    # None: the job's best_metric
    metric: str | None = None
    min_delta: float = 0.0


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 5e-5
    max_seq_length: int = 256
    validation_split: float = 0.1
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    # None: about ten logs per epoch
    logging_steps: int | None = None
    # None: evaluate at every epoch end (and always at the last step)
    eval_steps: int | None = None
    # also checkpoint every N steps (epoch ends and evaluations always checkpoint)
    checkpoint_steps: int | None = None
    early_stopping: EarlyStopping | None = None
    # the exported checkpoint is the best evaluation by this metric
    best_metric: str = "eval_loss"
    # causal LM: take the loss on prompt/user tokens too, not only on completions
    train_on_inputs: bool = False
    gradient_checkpointing: bool = False
    # causal LM padding-free batches; None: on where a GPU runs a model that supports them
    packing: bool | None = None

    @property
    def monitored_metric(self) -> str:
        """The metric early stopping watches."""
        if self.early_stopping is not None and self.early_stopping.metric:
            return self.early_stopping.metric
        return self.best_metric


@dataclass(frozen=True)
class TrainingType:
    type: Literal["lora", "qlora", "full", "freeze"] = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # None: peft's default for the architecture; "all-linear"; or module names
    target_modules: str | list[str] | None = None
    trainable_layers: int = 2

    @property
    def is_adapter(self) -> bool:
        return self.type in ADAPTER_TYPES


@dataclass(frozen=True)
class TrainSpec:
    task: Task
    base_model_dir: Path
    train_file: DataFile
    output_dir: Path
    events_path: Path
    validation_file: DataFile | None = None
    seed: int = 42
    job_id: str = ""
    # continue from the last checkpoint in output_dir/checkpoints (a retried job)
    resume: bool = False
    # start from these weights instead of the base model's (another job's checkpoint: a model
    # directory with tunery.json); optimizer and schedule start fresh
    init_from: Path | None = None
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    training_type: TrainingType = field(default_factory=TrainingType)


def parse_spec(raw: dict[str, Any] | TrainSpec) -> TrainSpec:
    """Validate a spec dict (unknown keys are ignored); raise TrainingFailure("invalid_spec")."""
    if isinstance(raw, TrainSpec):
        return raw
    try:
        return _parse(raw)
    except TrainingFailure:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingFailure("invalid_spec", f"invalid trainer spec: {exc!r}") from exc


def _parse(raw: dict[str, Any]) -> TrainSpec:
    task = raw["task"]
    if task not in TASKS:
        raise TrainingFailure(
            "invalid_spec", f"task must be one of {', '.join(TASKS)}, got {task!r}"
        )
    validation = raw.get("validation_file")
    init_from = raw.get("init_from")
    hyperparameters = _hyperparameters(raw.get("hyperparameters") or {})
    allowed = METRICS_BY_TASK[task]
    for name, metric in (
        ("best_metric", hyperparameters.best_metric),
        ("early_stopping", hyperparameters.monitored_metric),
    ):
        if metric not in allowed:
            raise TrainingFailure(
                "invalid_spec",
                f"{name} must be one of {', '.join(allowed)} for a {task} job, got {metric!r}",
                name,
            )
    if task == "classification" and hyperparameters.train_on_inputs:
        raise TrainingFailure(
            "invalid_spec", "train_on_inputs applies to causal-lm jobs only", "train_on_inputs"
        )
    return TrainSpec(
        task=task,
        base_model_dir=Path(raw["base_model_dir"]),
        train_file=_data_file(raw["train_file"]),
        validation_file=_data_file(validation) if validation else None,
        output_dir=Path(raw["output_dir"]),
        events_path=Path(raw["events_path"]),
        seed=int(raw.get("seed", 42)),
        job_id=str(raw.get("job_id", "")),
        resume=bool(raw.get("resume", False)),
        init_from=Path(init_from) if init_from else None,
        hyperparameters=hyperparameters,
        training_type=_training_type(raw.get("training_type") or {"type": "lora"}),
    )


def _data_file(raw: dict[str, Any]) -> DataFile:
    path = Path(raw["path"])
    return DataFile(path=path, filename=str(raw.get("filename") or path.name))


def _optional_int(raw: dict[str, Any], name: str) -> int | None:
    value = raw.get(name)
    return None if value is None else int(value)


def _early_stopping(raw: Any) -> EarlyStopping | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TrainingFailure(
            "invalid_spec", "early_stopping must be an object or null", "early_stopping"
        )
    defaults = EarlyStopping()
    metric = raw.get("metric")
    parsed = EarlyStopping(
        patience=int(raw.get("patience", defaults.patience)),
        metric=str(metric) if metric is not None else None,
        min_delta=float(raw.get("min_delta", defaults.min_delta)),
    )
    if parsed.patience < 1 or not 0 <= parsed.min_delta < math.inf:
        raise TrainingFailure(
            "invalid_spec",
            f"early_stopping needs patience >= 1 and min_delta >= 0, got {raw}",
            "early_stopping",
        )
    return parsed


def _hyperparameters(raw: dict[str, Any]) -> Hyperparameters:
    defaults = Hyperparameters()
    logging_steps = raw.get("logging_steps")
    packing = raw.get("packing")
    hp = Hyperparameters(
        n_epochs=int(raw.get("n_epochs", defaults.n_epochs)),
        batch_size=int(raw.get("batch_size", defaults.batch_size)),
        learning_rate=float(raw.get("learning_rate", defaults.learning_rate)),
        max_seq_length=int(raw.get("max_seq_length", defaults.max_seq_length)),
        validation_split=float(raw.get("validation_split", defaults.validation_split)),
        gradient_accumulation_steps=int(
            raw.get("gradient_accumulation_steps", defaults.gradient_accumulation_steps)
        ),
        weight_decay=float(raw.get("weight_decay", defaults.weight_decay)),
        warmup_ratio=float(raw.get("warmup_ratio", defaults.warmup_ratio)),
        lr_scheduler=str(raw.get("lr_scheduler", defaults.lr_scheduler)),
        max_grad_norm=float(raw.get("max_grad_norm", defaults.max_grad_norm)),
        logging_steps=int(logging_steps) if logging_steps is not None else None,
        eval_steps=_optional_int(raw, "eval_steps"),
        checkpoint_steps=_optional_int(raw, "checkpoint_steps"),
        early_stopping=_early_stopping(raw.get("early_stopping")),
        best_metric=str(raw.get("best_metric") or defaults.best_metric),
        train_on_inputs=bool(raw.get("train_on_inputs", defaults.train_on_inputs)),
        gradient_checkpointing=bool(
            raw.get("gradient_checkpointing", defaults.gradient_checkpointing)
        ),
        packing=None if packing is None else bool(packing),
    )
    checks = {
        "n_epochs": hp.n_epochs >= 1,
        "batch_size": hp.batch_size >= 1,
        "learning_rate": hp.learning_rate > 0,
        "max_seq_length": hp.max_seq_length >= 2,
        "validation_split": 0 <= hp.validation_split < 1,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps >= 1,
        "warmup_ratio": 0 <= hp.warmup_ratio < 1,
        "logging_steps": hp.logging_steps is None or hp.logging_steps >= 1,
        "eval_steps": hp.eval_steps is None or hp.eval_steps >= 1,
        "checkpoint_steps": hp.checkpoint_steps is None or hp.checkpoint_steps >= 1,
        "weight_decay": 0 <= hp.weight_decay <= 1,
        "max_grad_norm": 0 <= hp.max_grad_norm < math.inf,
    }
    if hp.lr_scheduler not in LR_SCHEDULERS:
        raise TrainingFailure(
            "invalid_spec",
            f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {hp.lr_scheduler!r}",
            "lr_scheduler",
        )
    for name, ok in checks.items():
        if not ok:
            raise TrainingFailure(
                "invalid_spec", f"hyperparameter {name} is out of range: {getattr(hp, name)}", name
            )
    return hp


def _training_type(raw: dict[str, Any]) -> TrainingType:
    kind = raw.get("type", "lora")
    if kind not in TRAINING_TYPES:
        raise TrainingFailure(
            "invalid_spec",
            f"training_type.type must be one of {', '.join(TRAINING_TYPES)}, got {kind!r}",
            "training_type",
        )
    defaults = TrainingType()
    target = raw.get("target_modules")
    if target is not None and not isinstance(target, str):
        target = [str(name) for name in target]
    parsed = TrainingType(
        type=kind,
        r=int(raw.get("r", defaults.r)),
        alpha=int(raw.get("alpha", defaults.alpha)),
        dropout=float(raw.get("dropout", defaults.dropout)),
        target_modules=target,
        trainable_layers=int(raw.get("trainable_layers", defaults.trainable_layers)),
    )
    if (
        parsed.r < 1
        or parsed.alpha < 1
        or not 0 <= parsed.dropout < 1
        or parsed.trainable_layers < 0
    ):
        raise TrainingFailure(
            "invalid_spec", f"training_type has a value out of range: {raw}", "training_type"
        )
    return parsed

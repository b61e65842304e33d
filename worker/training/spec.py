"""The trainer child's input (a spec) and its one way to fail (TrainingFailure).

The spec's shape is pinned in docs/internals.md; it is parsed here once into typed
dataclasses so the rest of the trainer never digs through dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Task = Literal["classification", "causal-lm"]
TASKS: tuple[Task, ...] = ("classification", "causal-lm")
TRAINING_TYPES = ("lora", "full", "freeze")


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


@dataclass(frozen=True)
class TrainingType:
    type: Literal["lora", "full", "freeze"] = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # None: peft's default for the architecture; "all-linear"; or module names
    target_modules: str | list[str] | None = None
    trainable_layers: int = 2


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
        hyperparameters=_hyperparameters(raw.get("hyperparameters") or {}),
        training_type=_training_type(raw.get("training_type") or {"type": "lora"}),
    )


def _data_file(raw: dict[str, Any]) -> DataFile:
    path = Path(raw["path"])
    return DataFile(path=path, filename=str(raw.get("filename") or path.name))


def _hyperparameters(raw: dict[str, Any]) -> Hyperparameters:
    defaults = Hyperparameters()
    logging_steps = raw.get("logging_steps")
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
    }
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

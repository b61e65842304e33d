"""The job spec, defined once: the API validates a request with these types and writes the
resolved values on the job, the supervisor builds a TrainSpec from the job's row, and the
trainer child parses its spec file with TrainSpec. Torch-free.

Every range is written here and nowhere else, so a value the API accepts is a value the
trainer trains with, unchanged (tests/app/jobs/test_spec.py draws every field to prove it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

import task_plugins
from app.failures import Failure

if TYPE_CHECKING:
    MetricName = str
else:
    # every task's metrics: a job's own task narrows them (task_problems)
    MetricName = Literal[task_plugins.metric_names()]

ADAPTER_TYPES = frozenset({"lora", "qlora"})
LrScheduler = Literal["linear", "cosine", "constant"]

# The ranges, one per field.
NEpochs = Annotated[int, Field(ge=1, le=100)]
BatchSize = Annotated[int, Field(ge=1, le=1024)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
LearningRateMultiplier = Annotated[float, Field(gt=0, le=100)]
MaxSeqLength = Annotated[int, Field(ge=8, le=32768)]
ValidationSplit = Annotated[float, Field(gt=0, le=0.5)]
AccumulationSteps = Annotated[int, Field(ge=1, le=1024)]
WarmupRatio = Annotated[float, Field(ge=0, le=0.5)]
WeightDecay = Annotated[float, Field(ge=0, le=1)]
# 0 turns gradient clipping off
MaxGradNorm = Annotated[float, Field(ge=0, le=1000)]
Steps = Annotated[int, Field(ge=1, le=1_000_000)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class Strict(BaseModel):
    # unknown fields are refused, and so are values of the wrong JSON type: "3" is no
    # epoch count and true no batch size (lax pydantic would coerce both)
    model_config = ConfigDict(extra="forbid", strict=True)


# Early stopping's default threshold: an evaluation improves on the best so far only when it
# is better by more than 1% of the best value. A validation metric moves in its third decimal
# between equally good checkpoints (eval_loss 0.2123 vs 0.2150 on 80 rows), and a relative
# threshold fits every metric's scale (a loss of 0.2 or 2.5, an accuracy of 0.9) where one
# absolute number cannot. docs/training.md, "Which checkpoint is the model".
DEFAULT_MIN_DELTA = 0.01
# Below this many validation rows, picking a checkpoint by a validation metric is noise
# (a warning event says so when the job selects one).
NOISY_VALIDATION_ROWS = 200
# Why the exported model is the checkpoint it is (the job's result_reason).
ResultReason = Literal["final", "best_metric", "early_stopping"]


class EarlyStopping(Strict):
    """Stop when `metric` has not improved by more than `min_delta` (a fraction of the best
    value so far when `relative`, else in the metric's units) for `patience` evaluations."""

    patience: Annotated[int, Field(ge=1, le=100)] = 3
    # None: the job's best_metric, or eval_loss when it has none
    metric: MetricName | None = None
    min_delta: Annotated[float, Field(ge=0, le=1000)] = DEFAULT_MIN_DELTA
    # False: min_delta in the metric's own units (every job created before relative
    # thresholds existed was migrated to False, so it stops where it would have)
    relative: bool = True

    def threshold(self, best: float) -> float:
        """How much better than `best` an evaluation must be to count as an improvement."""
        return self.min_delta * abs(best) if self.relative else self.min_delta


class Hyperparameters(Strict):
    """What the trainer trains with: every value resolved (no "auto")."""

    n_epochs: NEpochs = 3
    batch_size: BatchSize = 8
    learning_rate: LearningRate = 5e-5
    max_seq_length: MaxSeqLength = 256
    validation_split: ValidationSplit = 0.1
    gradient_accumulation_steps: AccumulationSteps = 1
    lr_scheduler: LrScheduler = "linear"
    warmup_ratio: WarmupRatio = 0.0
    weight_decay: WeightDecay = 0.0
    max_grad_norm: MaxGradNorm = 1.0
    # None: evaluate at every epoch end (and always at the last step)
    eval_steps: Steps | None = None
    # also checkpoint every N steps (epoch ends and evaluations always checkpoint)
    checkpoint_steps: Steps | None = None
    # None: about ten logs per epoch
    logging_steps: Steps | None = None
    early_stopping: EarlyStopping | None = None
    # set: the exported model is the checkpoint of the best evaluation by this metric;
    # None: the final model (or, with early stopping, the best by its metric)
    best_metric: MetricName | None = None
    # causal LM: take the loss on prompt/user tokens too, not only on completions
    train_on_inputs: bool = False
    gradient_checkpointing: bool = False
    # image and audio classification: random crops and flips (images), random windows of
    # long clips (audio) of the training rows
    augmentation: bool = True
    # audio classification: keep the convolutional feature encoder fixed
    freeze_feature_encoder: bool = True
    # causal LM padding-free batches; None: on where a GPU runs a model that supports them
    packing: bool | None = None

    @property
    def monitored_metric(self) -> str:
        """The metric early stopping watches."""
        if self.early_stopping is not None and self.early_stopping.metric:
            return self.early_stopping.metric
        return self.best_metric or "eval_loss"

    @property
    def selection_metric(self) -> str | None:
        """The metric the exported checkpoint is picked by; None: the final model is."""
        if self.best_metric is not None:
            return self.best_metric
        if self.early_stopping is not None:
            return self.monitored_metric
        return None

    @property
    def result_reason(self) -> ResultReason:
        """Why the exported model is the checkpoint it is."""
        if self.best_metric is not None:
            return "best_metric"
        if self.early_stopping is not None:
            return "early_stopping"
        return "final"


class JobHyperparameters(Hyperparameters):
    """The hyperparameters a job shows: the trainer's, plus the multiplier that gave its
    learning rate (learning_rate / the task's base rate; the trainer reads learning_rate)."""

    learning_rate_multiplier: Annotated[float, Field(gt=0)]


def trainer_hyperparameters(job: dict[str, Any]) -> dict[str, Any]:
    """A job's hyperparameters (as stored on its row) as the trainer's spec carries them."""
    shown_only = JobHyperparameters.model_fields.keys() - Hyperparameters.model_fields.keys()
    return {name: value for name, value in job.items() if name not in shown_only}


class LoraType(Strict):
    type: Literal["lora"]
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0, le=4096)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    # None: peft's default for the architecture; "all-linear"; or module names
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | str | None = None

    @model_validator(mode="after")
    def _targets(self) -> LoraType:
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError('target_modules must be a list of module names or "all-linear"')
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules must not be an empty list")
        return self

    @property
    def is_adapter(self) -> bool:
        return True


class QLoraType(LoraType):
    """LoRA on a 4-bit (NF4) base: needs a worker with a CUDA GPU and bitsandbytes."""

    type: Literal["qlora"]  # type: ignore[assignment]


class FullType(Strict):
    type: Literal["full"]

    @property
    def is_adapter(self) -> bool:
        return False


class FreezeType(Strict):
    type: Literal["freeze"]
    # 0 trains the head alone
    trainable_layers: Annotated[int, Field(ge=0, le=1000)] = 2

    @property
    def is_adapter(self) -> bool:
        return False


TrainingType = Annotated[LoraType | QLoraType | FullType | FreezeType, Field(discriminator="type")]


_TRAINING_TYPE: TypeAdapter[LoraType | QLoraType | FullType | FreezeType] = TypeAdapter(
    TrainingType
)


def training_type_of(raw: dict[str, Any]) -> LoraType | QLoraType | FullType | FreezeType:
    """A training type as stored on a job row, validated as the trainer reads it."""
    return _TRAINING_TYPE.validate_python(raw)


class SupervisedMethod(Strict):
    """The training method: a discriminated union on `type`, each method's settings beside
    `type` (DpoMethod's beta, loss_type, sft_weight)."""

    type: Literal["supervised"] = "supervised"


# DPO's settings. beta: how far the policy may move from the reference (OpenAI's range).
Beta = Annotated[float, Field(gt=0, le=2)]
# sigmoid: DPO's loss (Rafailov et al.); ipo: IPO's squared loss on length-averaged log-probs
DpoLossType = Literal["sigmoid", "ipo"]
# the weight of a supervised loss on the preferred answers, added to the preference loss
# (RPO, TRL's loss_type ["sigmoid", "sft"] with loss_weights)
SftWeight = Annotated[float, Field(ge=0, le=100)]


class DpoMethod(Strict):
    """Direct Preference Optimization on `preference` rows (worker/training/dpo.py)."""

    type: Literal["dpo"]
    beta: Beta = 0.1
    loss_type: DpoLossType = "sigmoid"
    sft_weight: SftWeight = 0.0


Method = Annotated[SupervisedMethod | DpoMethod, Field(discriminator="type")]
DPO_SETTINGS = ("beta", "loss_type", "sft_weight")


def trainer_method(stored: dict[str, Any]) -> dict[str, Any]:
    """A job's method as stored on its row (OpenAI's shape, the settings among the
    hyperparameters) as the trainer's spec carries it."""
    kind = stored.get("type", "supervised")
    if kind != "dpo":
        return {"type": kind}
    hyperparameters = stored.get("dpo", {}).get("hyperparameters", {})
    return {"type": kind, **{k: hyperparameters[k] for k in DPO_SETTINGS if k in hyperparameters}}


class DataFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    # the uploaded name, for messages; the path's name when absent
    filename: StrictStr = ""

    @model_validator(mode="after")
    def _name(self) -> DataFile:
        if not self.filename:
            self.filename = self.path.name
        return self


class TrainSpec(BaseModel):
    """The trainer child's input (docs/internals.md): what to train, on what, and where."""

    model_config = ConfigDict(extra="forbid")

    job_id: StrictStr = ""
    task: StrictStr
    method: Method = Field(default_factory=SupervisedMethod)
    base_model_dir: Path
    train_file: DataFile
    validation_file: DataFile | None = None
    output_dir: Path
    events_path: Path
    seed: Annotated[Seed, Field(strict=True)] = 42
    # continue from the last checkpoint in output_dir/checkpoints (a retried job)
    resume: StrictBool = False
    # start from these weights instead of the base model's (another job's checkpoint: a model
    # directory with tunery.json); optimizer and schedule start fresh
    init_from: Path | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    training_type: TrainingType = Field(default_factory=lambda: LoraType(type="lora"))
    # trainer processes (ranks); the supervisor decides
    processes: Annotated[int, Field(ge=1, le=1024, strict=True)] = 1
    # a sweep trial's: after each evaluation (but the last) wait up to this many seconds for
    # the supervisor to write the judged step to verdict.step (0: do not wait)
    verdict_seconds: Annotated[float, Field(ge=0, le=3600)] = 0.0

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        try:
            task_plugins.get(task)
        except task_plugins.UnknownTask as exc:
            raise ValueError(str(exc)) from None
        return task


class Problem(BaseModel):
    """A value that is valid alone but not for the job's task."""

    # under hyperparameters: ("best_metric",), ("early_stopping", "metric")
    path: tuple[str, ...]
    message: str


def task_problems(
    task: str, hyperparameters: Hyperparameters, method: str = "supervised"
) -> list[Problem]:
    """What the job's task (and method) refuses among otherwise valid hyperparameters."""
    plugin = task_plugins.get(task)
    allowed = plugin.metrics.selectable_for(method)
    what = task if method == "supervised" else f"{task} {method}"
    problems: list[Problem] = []
    early = hyperparameters.early_stopping
    for path, metric in (
        (("best_metric",), hyperparameters.best_metric),
        (("early_stopping", "metric"), early.metric if early else None),
    ):
        if metric is not None and metric not in allowed:
            problems.append(
                Problem(
                    path=path,
                    message=f"'{metric}' is not a {what} metric; use one of {', '.join(allowed)}.",
                )
            )
    for name in _task_only_hyperparameters():
        value = getattr(hyperparameters, name)
        if (
            name not in plugin.hyperparameters
            and value != Hyperparameters.model_fields[name].default
        ):
            takers = [t.name for t in task_plugins.TASKS if name in t.hyperparameters]
            problems.append(
                Problem(
                    path=(name,),
                    message=f"applies to {' and '.join(takers)} jobs only; a {task} job does not "
                    "take it. Leave it out.",
                )
            )
    return problems


def _task_only_hyperparameters() -> list[str]:
    return list(dict.fromkeys(name for t in task_plugins.TASKS for name in t.hyperparameters))


def dump_spec(spec: TrainSpec) -> str:
    """The spec file the supervisor writes and parse_spec reads back (floats exactly)."""
    return spec.model_dump_json(indent=2)


def parse_spec(raw: dict[str, Any] | TrainSpec) -> TrainSpec:
    """The trainer's spec, validated; raises Failure("invalid_spec") naming the field."""
    if isinstance(raw, TrainSpec):
        spec = raw
    else:
        try:
            spec = TrainSpec.model_validate(raw)
        except ValidationError as exc:
            raise _invalid(exc) from exc
    for problem in task_problems(spec.task, spec.hyperparameters, spec.method.type):
        raise Failure("invalid_spec", f"{problem.path[0]} {problem.message}", problem.path[0])
    return spec


_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _invalid(exc: ValidationError) -> Failure:
    """The first problem, said the way the trainer's users (scripts, benchmarks) need it."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    # the hyperparameter's name, or the spec's top-level field
    param = loc[1] if loc[0] == "hyperparameters" and len(loc) > 1 else loc[0] if loc else None
    where = ".".join(loc) or "the spec"
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    if kind in _BOUNDS:
        limit = next(iter(context.values()), "?")
        message = f"{where} is out of range: {value!r} (it must be {_BOUNDS[kind]} {limit})"
    elif kind == "literal_error":
        choices = str(context.get("expected", "")).replace("'", "").replace(" or ", ", ")
        message = f"{where} must be one of {choices}, got {value!r}"
    else:
        message = f"{where}: {error['msg']}"
    return Failure("invalid_spec", f"invalid trainer spec: {message}", param)

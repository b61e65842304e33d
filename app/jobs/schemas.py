"""Job requests and the job object (OpenAI's fine_tuning.job plus Tunery's fields)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.tables import JobCheckpointRow, JobRow

Auto = Literal["auto"]


class Strict(BaseModel):
    # unknown fields are refused, and so are values of the wrong JSON type: "3" is no
    # epoch count and true no batch size (lax pydantic would coerce both)
    model_config = ConfigDict(extra="forbid", strict=True)


LrScheduler = Literal["linear", "cosine", "constant"]
MetricName = Literal[
    "eval_loss", "accuracy", "f1", "precision", "recall", "perplexity", "token_accuracy"
]


class EarlyStopping(Strict):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations."""

    patience: Annotated[int, Field(ge=1, le=100)] = 3
    # default: the job's best_metric
    metric: MetricName | None = None
    min_delta: Annotated[float, Field(ge=0, le=1000)] = 0.0


class Hyperparameters(Strict):
    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto = "auto"
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto = "auto"
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = "auto"
    max_seq_length: Annotated[int, Field(ge=8, le=32768)] | None = None
    validation_split: Annotated[float, Field(gt=0, le=0.5)] | None = None
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    lr_scheduler: LrScheduler | None = None
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] | None = None
    weight_decay: Annotated[float, Field(ge=0, le=1)] | None = None
    # 0 turns gradient clipping off
    max_grad_norm: Annotated[float, Field(ge=0, le=1000)] | None = None
    # evaluate every N steps; None or "epoch": at every epoch end
    eval_steps: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["epoch"] | None = None
    # also checkpoint every N steps (epoch ends and evaluations always checkpoint)
    checkpoint_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    logging_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    early_stopping: EarlyStopping | None = None
    best_metric: MetricName | None = None
    # causal LM: also take the loss on prompts / system and user turns
    train_on_inputs: bool | None = None
    gradient_checkpointing: bool | None = None
    # causal LM padding-free batches; None ("auto"): on where a GPU runs a model that can
    packing: bool | Auto | None = None

    @model_validator(mode="after")
    def _one_learning_rate(self) -> Hyperparameters:
        if self.learning_rate is not None and self.learning_rate_multiplier != "auto":
            raise ValueError("give learning_rate or learning_rate_multiplier, not both")
        return self


class Supervised(Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(Strict):
    type: Literal["supervised"] = "supervised"
    supervised: Supervised = Field(default_factory=Supervised)


class LoraType(Strict):
    type: Literal["lora"]
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0, le=4096)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | str | None = None

    @model_validator(mode="after")
    def _targets(self) -> LoraType:
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError('target_modules must be a list of module names or "all-linear"')
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules must not be an empty list")
        return self


class FullType(Strict):
    type: Literal["full"]


class FreezeType(Strict):
    type: Literal["freeze"]
    trainable_layers: Annotated[int, Field(ge=0, le=1000)] = 2


class QLoraType(LoraType):
    """LoRA on a 4-bit (NF4) base: needs a worker with a CUDA GPU and bitsandbytes."""

    type: Literal["qlora"]  # type: ignore[assignment]


TrainingType = Annotated[LoraType | QLoraType | FullType | FreezeType, Field(discriminator="type")]


class JobCreate(Strict):
    model: Annotated[str, Field(min_length=1, max_length=255)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    suffix: Annotated[str, Field(max_length=40, pattern=r"^[A-Za-z0-9_.-]*$")] | None = None
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = None
    method: Method | None = None
    # OpenAI's older top-level field, still sent by some clients
    hyperparameters: Hyperparameters | None = None
    training_type: TrainingType | None = None
    integrations: list[dict[str, Any]] | None = None
    # start from another job's checkpoint (its id "ftckpt-..." or its model name
    # "ft:...:ckpt-step-N"): its weights, with a fresh optimizer and schedule
    from_checkpoint: Annotated[str, Field(min_length=1, max_length=600)] | None = None

    @model_validator(mode="after")
    def _limits(self) -> JobCreate:
        if self.metadata is not None and len(self.metadata) > 16:
            raise ValueError("metadata holds at most 16 keys")
        if self.method is not None and self.hyperparameters is not None:
            raise ValueError("give hyperparameters inside method.supervised, not both places")
        return self

    def requested_hyperparameters(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    status: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str = "org-tunery"
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    trained_tokens: int | None
    error: JobError | None
    result_files: list[str]
    estimated_finish: int | None
    integrations: list[dict[str, Any]] = []
    training_type: dict[str, Any]
    task: str
    progress: dict[str, Any]
    best_step: int | None
    attempt: int
    from_checkpoint: str | None = None

    @classmethod
    def of(cls, row: JobRow) -> JobPublic:
        return cls(
            id=row.id,
            model=row.model,
            status=row.status,
            created_at=row.created_at,
            finished_at=row.finished_at,
            fine_tuned_model=row.fine_tuned_model,
            training_file=row.training_file,
            validation_file=row.validation_file,
            hyperparameters=row.hyperparameters,
            method=row.method,
            seed=row.seed,
            suffix=row.suffix,
            metadata=row.user_metadata,
            trained_tokens=row.trained_tokens,
            error=JobError(**row.error) if row.error else None,
            result_files=row.result_files or [],
            estimated_finish=row.estimated_finish,
            training_type=row.training_type,
            task=row.task,
            progress=row.progress or {},
            best_step=row.best_step,
            attempt=row.attempt,
            from_checkpoint=row.from_checkpoint,
        )


class CheckpointPublic(BaseModel):
    """OpenAI's fine_tuning.job.checkpoint."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]
    epoch: float | None

    @classmethod
    def of(cls, row: JobCheckpointRow) -> CheckpointPublic:
        return cls(
            id=row.id,
            created_at=row.created_at,
            fine_tuned_model_checkpoint=row.model_name,
            fine_tuning_job_id=row.job_id,
            step_number=row.step,
            metrics=row.metrics,
            epoch=row.epoch,
        )

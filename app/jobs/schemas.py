"""Job requests and the job object (OpenAI's fine_tuning.job plus Tunery's fields)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, Field, model_validator

from app.jobs.spec import (
    AccumulationSteps,
    BatchSize,
    Beta,
    DpoLossType,
    EarlyStopping,
    LearningRate,
    LearningRateMultiplier,
    LrScheduler,
    MaxGradNorm,
    MaxSeqLength,
    MetricName,
    NEpochs,
    ResultReason,
    Seed,
    SftWeight,
    Steps,
    Strict,
    TrainingType,
    ValidationSplit,
    WarmupRatio,
    WeightDecay,
)
from app.tables import JobCheckpointRow, JobRow

Auto = Literal["auto"]


class Hyperparameters(Strict):
    """A request's hyperparameters: the spec's types (app/jobs/spec.py), each "auto" or left
    out where the job's task picks the value."""

    n_epochs: NEpochs | Auto = "auto"
    batch_size: BatchSize | Auto = "auto"
    learning_rate: LearningRate | None = None
    learning_rate_multiplier: LearningRateMultiplier | Auto = "auto"
    max_seq_length: MaxSeqLength | None = None
    validation_split: ValidationSplit | None = None
    gradient_accumulation_steps: AccumulationSteps | None = None
    lr_scheduler: LrScheduler | None = None
    warmup_ratio: WarmupRatio | None = None
    weight_decay: WeightDecay | None = None
    max_grad_norm: MaxGradNorm | None = None
    # evaluate every N steps; None or "epoch": at every epoch end
    eval_steps: Steps | Literal["epoch"] | None = None
    checkpoint_steps: Steps | None = None
    logging_steps: Steps | None = None
    early_stopping: EarlyStopping | None = None
    best_metric: MetricName | None = None
    train_on_inputs: bool | None = None
    gradient_checkpointing: bool | None = None
    augmentation: bool | None = None
    freeze_feature_encoder: bool | None = None
    # None ("auto"): on where a GPU runs a model that can
    packing: bool | Auto | None = None

    @model_validator(mode="after")
    def _one_learning_rate(self) -> Hyperparameters:
        if self.learning_rate is not None and self.learning_rate_multiplier != "auto":
            raise ValueError("give learning_rate or learning_rate_multiplier, not both")
        return self


class Supervised(Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters (beta beside the supervised ones), and Tunery's loss
    variants (docs/training.md, "Preference tuning (DPO)")."""

    beta: Beta | Auto = "auto"
    loss_type: DpoLossType | None = None
    sft_weight: SftWeight | None = None


class Dpo(Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(Strict):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> Method:
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(
                f"method.type is {self.type!r}, so give its settings as method.{self.type}, "
                f"not method.{other}"
            )
        return self

    def hyperparameters(self) -> Hyperparameters:
        if self.type == "dpo":
            return (self.dpo or Dpo()).hyperparameters
        return (self.supervised or Supervised()).hyperparameters


class JobCreate(Strict):
    model: Annotated[str, Field(min_length=1, max_length=255)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    seed: Seed | None = None
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
            raise ValueError(
                f"give hyperparameters inside method.{self.method.type}, not both places"
            )
        return self

    def requested_hyperparameters(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.hyperparameters()
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
    # the best evaluation by the job's selection metric (null when it exports the final model)
    best_step: int | None
    # the checkpoint the fine-tuned model is (a model name), its step, and why that one:
    # "final" (the default), "best_metric" or "early_stopping"
    result_checkpoint: str | None = None
    result_step: int | None = None
    result_reason: ResultReason | None = None
    # rows of the validation set the evaluations (and any selection) ran on
    n_validation: int | None = None
    attempt: int
    from_checkpoint: str | None = None
    # the Hub commit of the base model when it was pulled from the Hub: the job can be redone
    model_sha: str | None = None

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
            result_checkpoint=(
                f"{row.fine_tuned_model}:ckpt-step-{row.result_step}"
                if row.fine_tuned_model and row.result_step is not None
                else None
            ),
            result_step=row.result_step,
            result_reason=cast(ResultReason | None, row.result_reason),
            n_validation=row.n_validation,
            attempt=row.attempt,
            from_checkpoint=row.from_checkpoint,
            model_sha=row.model_sha,
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

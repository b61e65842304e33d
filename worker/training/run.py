"""The trainer child: `python -m worker.training.run SPEC_JSON` (docs/internals.md).

SPEC_JSON is the path of the spec file (or the spec itself as JSON text). Events are
appended to spec["events_path"], one JSON object per line, flushed per line. Exit status:
0 after `succeeded` or `paused`, 1 after `failed`, 2 for a bad command line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from app.failures import Failure
from app.jobs.spec import (
    NOISY_VALIDATION_ROWS,
    DpoMethod,
    Hyperparameters,
    TrainSpec,
    parse_spec,
)
from worker.training.callbacks import EventCallback, EventLog, GuardedTrainer, NonFiniteLoss
from worker.training.checkpoints import CheckpointHandoff, best_checkpoint_dir
from worker.training.data import Splits, load_splits
from worker.training.dpo import DpoTrainer, add_reference_logps
from worker.training.events import Failed, Paused, Succeeded
from worker.training.export import export_model
from worker.training.features import Encoded, ListDataset
from worker.training.launch import die_with_parent
from worker.training.layout import (
    CHECKPOINTS_DIRNAME,
    PAUSE_FILENAME,
    VERDICT_FILENAME,
    checkpoint_dirname,
    checkpoint_steps,
)
from worker.training.plugin import ComputeMetrics, PreprocessLogits, TaskTrainer, trainer_for
from worker.training.recipes import (
    apply_recipe,
    count_parameters,
    load_config,
    load_model,
    quantization_config,
    read_init_manifest,
)
from worker.training.schedule import PauseSignal, TrainingSchedule
from worker.training.verdict import AwaitVerdict, VerdictFile

# Effectively unlimited tokenizer.model_max_length values mean "no limit was configured".
_NO_LIMIT = 1_000_000
# An exception's text can be huge (a tensor dump); the event keeps the start.
_MAX_MESSAGE = 4000


@dataclass(frozen=True)
class Ranks:
    """This process's place among the trainer processes (torchrun's environment variables)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Ranks:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )


def train(
    spec: dict[str, Any] | TrainSpec,
    emit: Callable[[dict[str, Any]], None],
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Train per the spec, emitting events; return the final event (`succeeded`, or `paused`
    when a pause was requested through the pause file).

    Every failure is emitted as a `failed` event, then raised as a Failure (an unexpected
    exception becomes code "trainer_error", chained to the original).
    """
    events = EventLog(emit)
    parsed: TrainSpec | None = None
    try:
        parsed = parse_spec(spec)
        return _train(parsed, events, ranks or Ranks.from_env())
    except Exception as exc:
        failure = as_failure(exc, parsed.hyperparameters if parsed else Hyperparameters())
        events.fail(failure.code, failure.message, failure.param)
        if failure is exc:
            raise
        raise failure from exc


def as_failure(exc: BaseException, hp: Hyperparameters) -> Failure:
    """Map an exception to the failure a user can act on."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, NonFiniteLoss):
        return Failure(
            "nan_loss",
            f"{exc}: training diverged. Lower learning_rate (now {hp.learning_rate:g}, try "
            f"{hp.learning_rate / 10:g}), add warmup (warmup_ratio), or clip gradients harder "
            f"(max_grad_norm, now {hp.max_grad_norm:g}).",
            "hyperparameters",
        )
    if _is_out_of_memory(exc):
        return Failure(
            "out_of_memory",
            f"ran out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            f"Lower batch_size (now {hp.batch_size}) and raise gradient_accumulation_steps to keep "
            f"the effective batch size, use training_type lora (or qlora on a GPU), lower "
            f"max_seq_length (now {hp.max_seq_length}), or turn on gradient_checkpointing.",
            "hyperparameters",
        )
    return Failure("trainer_error", f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE])


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _train(spec: TrainSpec, events: EventLog, ranks: Ranks) -> dict[str, Any]:
    threads = os.environ.get("TUNERY_TRAINER_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    # Weight loading/saving bars would only clutter the worker's log.
    hf_logging.disable_progress_bar()
    hp = spec.hyperparameters
    task = trainer_for(spec.task)
    cuda = torch.cuda.is_available()
    quantization = quantization_config() if spec.training_type.type == "qlora" else None
    splits = load_splits(spec)
    weights_dir, adapter_dir = _starting_point(spec, task, splits)
    config = load_config(weights_dir)
    task.check_base_model(config, spec.base_model_dir)
    processor = task.load_processor(spec.base_model_dir, splits.formats, events.message)
    max_length = effective_max_length(hp.max_seq_length, config, processor, events.message)
    train_set, validation_set = _encode(spec, task, splits, processor, max_length, events)

    # Seeded: a new classification head and LoRA's matrices start from random weights.
    set_seed(spec.seed)
    base = load_model(spec.task, weights_dir, splits.labels, quantization, ranks.local_rank)
    if getattr(base.config, "pad_token_id", None) is None and hasattr(processor, "pad_token_id"):
        # Sequence classification finds each row's last token through the pad id.
        base.config.pad_token_id = getattr(processor, "pad_token_id", None)
    model = apply_recipe(base, spec.task, spec.training_type, events.message, adapter_dir)
    task.prepare_model(model, spec, events.message)
    trainable, total = count_parameters(model)
    resume_from = _checkpoint_to_resume(spec, events, ranks)
    args = training_arguments(spec, len(train_set.features), ranks)
    collator = task.collator(spec, model, processor, train_set, cuda, events.message)
    compute_metrics: ComputeMetrics | None
    preprocess_logits: PreprocessLogits | None
    compute_metrics, preprocess_logits = task.metrics(splits.labels, validation_set)
    trainer_class: type[GuardedTrainer] = GuardedTrainer
    method_kwargs: dict[str, Any] = {}
    if isinstance(spec.method, DpoMethod):
        # the reference model's log-probabilities: the model as it starts, computed once
        device = next(model.parameters()).device if quantization else args.device
        model.to(device)
        for features in (train_set.features, validation_set.features):
            add_reference_logps(model, features, collator, spec.method, hp.batch_size, device)
        trainer_class, method_kwargs = DpoTrainer, {"method": spec.method}
        compute_metrics, preprocess_logits = None, None

    schedule = TrainingSchedule(
        hp, spec.task, PauseSignal(spec.output_dir / PAUSE_FILENAME, args.device), events.emit
    )
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=ListDataset(train_set.features),
        eval_dataset=ListDataset(validation_set.features),
        processing_class=processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
        **method_kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    started = {
        "n_train": len(train_set.features),
        "n_validation": len(validation_set.features),
        "n_truncated": train_set.truncated + validation_set.truncated,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    trainer.add_callback(EventCallback(events, spec.task, started))
    warn_if_selection_is_noisy(hp, len(validation_set.features), events.message)
    trainer.add_callback(schedule)
    if spec.verdict_seconds > 0:
        # after the eval event is written (EventCallback comes first)
        verdict = VerdictFile(spec.output_dir / VERDICT_FILENAME)
        trainer.add_callback(AwaitVerdict(verdict, spec.verdict_seconds))
    trainer.add_callback(CheckpointHandoff(spec, splits.labels, schedule, events, ranks.is_main))
    if isinstance(collator, TrainerCallback):
        # a collator that follows the training (the step its augmentation is seeded by)
        trainer.add_callback(collator)
    trainer.train(resume_from_checkpoint=resume_from)
    return _outcome(spec, trainer, schedule, splits.labels, events, ranks)


def _outcome(
    spec: TrainSpec,
    trainer: GuardedTrainer,
    schedule: TrainingSchedule,
    labels: list[str],
    events: EventLog,
    ranks: Ranks,
) -> dict[str, Any]:
    """After training: `paused`, or the export of the final (or the selected) checkpoint and
    `succeeded`."""
    if schedule.paused_at is not None and schedule.stopped_early is None:
        paused = Paused(step=trainer.state.global_step)
        events.emit(paused)
        return paused.wire()
    chosen = schedule.result
    if chosen is None:
        raise Failure(
            "trainer_error", "training ended without a single evaluation to pick a model by"
        )
    if ranks.is_main:
        export_model(
            best_checkpoint_dir(spec, chosen.step),
            spec,
            labels,
            chosen.fields,
            best_step=schedule.best_step,
            result_step=chosen.step,
            result_reason=schedule.result_reason,
        )
    result = Succeeded(
        trained_tokens=int(trainer.state.num_input_tokens_seen),
        metrics=chosen.fields,
        result_step=chosen.step,
        result_reason=schedule.result_reason,
        best_step=schedule.best_step,
    )
    if schedule.stopped_early is not None:
        result.stopped_early = schedule.stopped_early
    events.emit(result)
    return result.wire()


def warn_if_selection_is_noisy(
    hp: Hyperparameters, n_validation: int, note: Callable[[str, str], None]
) -> None:
    """A checkpoint picked on a small validation set is picked on noise: say so."""
    metric = hp.selection_metric
    if metric is None or n_validation >= NOISY_VALIDATION_ROWS:
        return
    why = "best_metric" if hp.best_metric is not None else "early_stopping"
    note(
        "warning",
        f"the validation set has {n_validation} rows, and this job picks its checkpoint by "
        f"{metric} on it ({why}): on fewer than {NOISY_VALIDATION_ROWS} rows, differences "
        "between checkpoints are mostly noise, and the pick can be worse than the final "
        "model. Give a validation_file of at least "
        f"{NOISY_VALIDATION_ROWS} rows (or a larger validation_split), or leave best_metric "
        "and early_stopping unset to export the final model.",
    )


def _starting_point(spec: TrainSpec, task: TaskTrainer, splits: Splits) -> tuple[Path, Path | None]:
    """(the weights to load, an adapter to continue): the base model, or from_checkpoint's."""
    if spec.init_from is None:
        return spec.base_model_dir, None
    manifest = read_init_manifest(spec.init_from)
    if manifest.get("task") != spec.task:
        raise Failure(
            "invalid_checkpoint",
            f"the checkpoint to start from was trained for {manifest.get('task')}, "
            f"this job is {spec.task}",
            "from_checkpoint",
        )
    is_adapter = manifest["format"] == "adapter"
    if is_adapter != spec.training_type.is_adapter:
        raise Failure(
            "invalid_checkpoint",
            f"the checkpoint to start from holds {'an adapter' if is_adapter else 'a whole model'}"
            f" (training_type {manifest.get('training_type')}); a job started from it must use "
            f"{'lora or qlora' if is_adapter else 'full or freeze'}",
            "from_checkpoint",
        )
    task.check_start(manifest, splits.labels)
    if is_adapter:
        return spec.base_model_dir, spec.init_from
    return spec.init_from, None


def _checkpoint_to_resume(spec: TrainSpec, events: EventLog, ranks: Ranks) -> str | None:
    checkpoints = spec.output_dir / CHECKPOINTS_DIRNAME
    if not spec.resume:
        # Checkpoints of an earlier attempt would mix into this run's best/latest rotation.
        if ranks.is_main:
            shutil.rmtree(checkpoints, ignore_errors=True)
        return None
    steps = checkpoint_steps(checkpoints)
    if not steps:
        events.message("info", "no checkpoint to resume from; training from the start")
        return None
    name = checkpoint_dirname(steps[-1])
    events.message("info", f"resuming from {name}")
    return str(checkpoints / name)


def _encode(
    spec: TrainSpec,
    task: TaskTrainer,
    splits: Splits,
    processor: Any,
    max_length: int,
    events: EventLog,
) -> tuple[Encoded, Encoded]:
    train_set = task.encode(spec, splits.train, processor, splits.labels, max_length)
    validation_set = task.encode(spec, splits.validation, processor, splits.labels, max_length)
    truncated = train_set.truncated + validation_set.truncated
    if truncated:
        events.message(
            "warning",
            f"{truncated} of {len(splits.train) + len(splits.validation)} rows are longer than "
            f"max_seq_length ({max_length} tokens) and were truncated "
            f"({train_set.truncated} training, {validation_set.truncated} validation)",
        )
    dropped = train_set.dropped + validation_set.dropped
    if dropped:
        events.message(
            "warning",
            f"{dropped} rows had no completion or assistant tokens left after truncation to "
            f"{max_length} tokens and were skipped; raise max_seq_length or shorten the prompts",
        )
    if len(train_set.features) < 2 or not validation_set.features:
        raise Failure(
            "too_few_rows",
            f"after truncation {len(train_set.features)} training and "
            f"{len(validation_set.features)} validation rows are left; at least 2 training rows "
            "and 1 validation row are needed",
            "training_file",
        )
    return train_set, validation_set


def effective_max_length(
    requested: int,
    config: PretrainedConfig,
    tokenizer: Any,
    note: Callable[[str, str], None],
) -> int:
    """max_seq_length, capped by what the model's position embeddings can take."""
    limits = [requested]
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _NO_LIMIT:
        limits.append(tokenizer_limit)
    length = min(limits)
    if length < requested:
        note("info", f"max_seq_length {requested} is more than the model takes; using {length}")
    return length


def training_arguments(
    spec: TrainSpec, n_train: int, ranks: Ranks | None = None
) -> TrainingArguments:
    hp = spec.hyperparameters
    ranks = ranks or Ranks()
    batches = math.ceil(math.ceil(n_train / ranks.world_size) / hp.batch_size)
    steps_per_epoch = math.ceil(batches / hp.gradient_accumulation_steps)
    cuda = torch.cuda.is_available()
    scheduler: str = hp.lr_scheduler
    if scheduler == "constant" and hp.warmup_ratio > 0:
        scheduler = "constant_with_warmup"
    try:
        return TrainingArguments(
            output_dir=str(spec.output_dir / CHECKPOINTS_DIRNAME),
            num_train_epochs=hp.n_epochs,
            per_device_train_batch_size=hp.batch_size,
            per_device_eval_batch_size=hp.batch_size,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            # a float below 1 is a ratio of the total steps
            warmup_steps=hp.warmup_ratio,
            lr_scheduler_type=scheduler,
            max_grad_norm=hp.max_grad_norm,
            logging_strategy="steps",
            logging_steps=hp.logging_steps or max(1, steps_per_epoch // 10),
            # report a NaN loss as it is (GuardedTrainer stops on it anyway)
            logging_nan_inf_filter=False,
            # TrainingSchedule decides when to evaluate and save (and keeps the best)
            eval_strategy="no",
            save_strategy="no",
            seed=spec.seed,
            data_seed=spec.seed,
            dataloader_num_workers=0,
            report_to="none",
            disable_tqdm=True,
            # pictures and sounds have no tokens (trained_tokens stays 0 for them)
            include_num_input_tokens_seen=(
                "non_padding" if trainer_for(spec.task).counts_tokens else "no"
            ),
            # our features are exactly the model's inputs; PEFT wrappers hide the signature
            remove_unused_columns=False,
            label_names=["labels"],
            use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            activation_checkpointing=hp.gradient_checkpointing,
            activation_checkpointing_kwargs=(
                {"use_reentrant": False} if hp.gradient_checkpointing else None
            ),
            ddp_backend=None if cuda or ranks.world_size == 1 else "gloo",
        )
    except ValueError as exc:
        raise Failure("invalid_spec", f"invalid hyperparameters: {exc}", "hyperparameters") from exc


def file_emitter(events_path: Path) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """(emit, close): append one JSON line per event, flushed so the supervisor sees it now."""
    events_path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(events_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the caller

    def emit(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, allow_nan=False) + "\n")
        stream.flush()

    return emit, stream.close


def _discard(event: dict[str, Any]) -> None:
    return None


def _nothing() -> None:
    return None


def _read_spec(argument: str) -> dict[str, Any]:
    text = (
        argument
        if argument.lstrip().startswith("{")
        else Path(argument).read_text(encoding="utf-8")
    )
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ValueError("the spec must be a JSON object")
    return spec


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.training.run SPEC_JSON", file=sys.stderr)
        return 2
    ranks = Ranks.from_env()
    try:
        spec = _read_spec(args[0])
        if ranks.is_main:
            emit, close = file_emitter(Path(spec["events_path"]))
        else:
            # Only rank 0 reports; the others' failures reach the supervisor as exit codes.
            emit, close = _discard, _nothing
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Without a readable spec there is no events file to report to.
        print(f"cannot read the trainer spec {args[0]!r}: {exc!r}", file=sys.stderr)
        return 1
    try:
        train(spec, emit, ranks)
        return 0
    except Failure as failure:
        if failure.code == "trainer_error" and failure.__cause__ is not None:
            traceback.print_exception(failure.__cause__, file=sys.stderr)
        return 1
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: still say so before dying
        emit(Failed(code="trainer_error", message=repr(exc), param=None).wire())
        raise
    finally:
        close()


if __name__ == "__main__":
    sys.exit(main())

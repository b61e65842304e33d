"""The trainer child: `python -m worker.training.run SPEC_JSON` (docs/internals.md).

SPEC_JSON is the path of the spec file (or the spec itself as JSON text). Events are
appended to spec["events_path"], one JSON object per line, flushed per line. Exit status:
0 after `succeeded`, 1 after `failed`, 2 for a bad command line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedTokenizerBase,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from worker.training.callbacks import EventCallback, EventLog, GuardedTrainer, NonFiniteLoss
from worker.training.data import (
    Encoded,
    ListDataset,
    PadCollator,
    Splits,
    encode_causal,
    encode_classification,
    load_splits,
    prepare_tokenizer,
)
from worker.training.export import export_model
from worker.training.metrics import (
    ClassificationMetrics,
    argmax_logits,
    causal_lm_metrics,
    eval_fields,
)
from worker.training.recipes import (
    apply_recipe,
    count_parameters,
    load_config,
    load_model,
    load_tokenizer,
)
from worker.training.spec import Hyperparameters, TrainingFailure, TrainSpec, parse_spec

CHECKPOINTS_DIRNAME = "checkpoints"
# Effectively unlimited tokenizer.model_max_length values mean "no limit was configured".
_NO_LIMIT = 1_000_000
# An exception's text can be huge (a tensor dump); the event keeps the start.
_MAX_MESSAGE = 4000


def train(
    spec: dict[str, Any] | TrainSpec, emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Train per the spec, emitting events; return the `succeeded` event.

    Every failure is emitted as a `failed` event, then raised as a TrainingFailure (an
    unexpected exception becomes code "trainer_error", chained to the original).
    """
    events = EventLog(emit)
    parsed: TrainSpec | None = None
    try:
        parsed = parse_spec(spec)
        return _train(parsed, events)
    except Exception as exc:
        failure = as_failure(exc, parsed.hyperparameters if parsed else Hyperparameters())
        events.fail(failure.code, failure.message, failure.param)
        if failure is exc:
            raise
        raise failure from exc


def as_failure(exc: BaseException, hp: Hyperparameters) -> TrainingFailure:
    """Map an exception to the failure a user can act on."""
    if isinstance(exc, TrainingFailure):
        return exc
    if isinstance(exc, NonFiniteLoss):
        return TrainingFailure(
            "nan_loss",
            f"{exc}: training diverged. Lower learning_rate (now {hp.learning_rate:g}, try "
            f"{hp.learning_rate / 10:g}), add warmup (warmup_ratio), or clip gradients harder "
            f"(max_grad_norm, now {hp.max_grad_norm:g}).",
            "hyperparameters",
        )
    if _is_out_of_memory(exc):
        return TrainingFailure(
            "out_of_memory",
            f"ran out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            f"Lower batch_size (now {hp.batch_size}) and raise gradient_accumulation_steps to keep "
            f"the effective batch size, use training_type lora, or lower max_seq_length "
            f"(now {hp.max_seq_length}).",
            "hyperparameters",
        )
    return TrainingFailure("trainer_error", f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE])


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _train(spec: TrainSpec, events: EventLog) -> dict[str, Any]:
    threads = os.environ.get("TUNERY_TRAINER_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    # Weight loading/saving bars would only clutter the worker's log.
    hf_logging.disable_progress_bar()
    hp = spec.hyperparameters
    splits = load_splits(spec)
    config = load_config(spec.base_model_dir)
    tokenizer = load_tokenizer(spec.base_model_dir)
    prepare_tokenizer(tokenizer, splits.formats, events.message)
    max_length = effective_max_length(hp.max_seq_length, config, tokenizer, events.message)
    train_set, validation_set = _encode(spec, splits, tokenizer, max_length, events)

    # Seeded: a new classification head and LoRA's matrices start from random weights.
    set_seed(spec.seed)
    base = load_model(spec.task, spec.base_model_dir, splits.labels)
    if base.config.pad_token_id is None:
        # Sequence classification finds each row's last token through the pad id.
        base.config.pad_token_id = tokenizer.pad_token_id
    model = apply_recipe(base, spec.task, spec.training_type, events.message)
    trainable, total = count_parameters(model)
    resume_from = _checkpoint_to_resume(spec, events)

    trainer = GuardedTrainer(
        model=model,
        args=training_arguments(spec, len(train_set.features)),
        data_collator=PadCollator(int(tokenizer.pad_token_id)),
        train_dataset=ListDataset(train_set.features),
        eval_dataset=ListDataset(validation_set.features),
        processing_class=tokenizer,
        compute_metrics=(
            ClassificationMetrics(splits.labels)
            if spec.task == "classification"
            else causal_lm_metrics
        ),
        preprocess_logits_for_metrics=argmax_logits if spec.task == "causal-lm" else None,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    started = {
        "n_train": len(train_set.features),
        "n_validation": len(validation_set.features),
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    trainer.add_callback(EventCallback(events, spec.task, started))
    trainer.train(resume_from_checkpoint=resume_from)

    best_step, metrics = best_eval(trainer.state, spec.task)
    assert trainer.model is not None
    export_model(trainer.model, tokenizer, spec, splits.labels, metrics, best_step)
    result = {
        "type": "succeeded",
        "trained_tokens": int(trainer.state.num_input_tokens_seen),
        "metrics": metrics,
        "best_step": best_step,
    }
    events.emit(result)
    return result


def _checkpoint_to_resume(spec: TrainSpec, events: EventLog) -> str | None:
    checkpoints = spec.output_dir / CHECKPOINTS_DIRNAME
    if not spec.resume:
        # Checkpoints of an earlier attempt would mix into this run's best/latest rotation.
        shutil.rmtree(checkpoints, ignore_errors=True)
        return None
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is None:
        events.message("info", "no checkpoint to resume from; training from the start")
    else:
        events.message("info", f"resuming from {Path(last).name}")
    return last


def _encode(
    spec: TrainSpec,
    splits: Splits,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    events: EventLog,
) -> tuple[Encoded, Encoded]:
    if spec.task == "classification":
        label_ids = {label: index for index, label in enumerate(splits.labels)}
        train_set = encode_classification(splits.train, tokenizer, label_ids, max_length)
        validation_set = encode_classification(splits.validation, tokenizer, label_ids, max_length)
    else:
        train_set = encode_causal(splits.train, tokenizer, max_length)
        validation_set = encode_causal(splits.validation, tokenizer, max_length)
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
        raise TrainingFailure(
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
    tokenizer: PreTrainedTokenizerBase,
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


def training_arguments(spec: TrainSpec, n_train: int) -> TrainingArguments:
    hp = spec.hyperparameters
    steps_per_epoch = math.ceil(math.ceil(n_train / hp.batch_size) / hp.gradient_accumulation_steps)
    cuda = torch.cuda.is_available()
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
            lr_scheduler_type=hp.lr_scheduler,
            max_grad_norm=hp.max_grad_norm,
            logging_strategy="steps",
            logging_steps=hp.logging_steps or max(1, steps_per_epoch // 10),
            # report a NaN loss as it is (GuardedTrainer stops on it anyway)
            logging_nan_inf_filter=False,
            eval_strategy="epoch",
            save_strategy="epoch",
            # the best and the latest checkpoint are all that is kept
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            seed=spec.seed,
            data_seed=spec.seed,
            dataloader_num_workers=0,
            report_to="none",
            disable_tqdm=True,
            include_num_input_tokens_seen="non_padding",
            # our features are exactly the model's inputs; PEFT wrappers hide the signature
            remove_unused_columns=False,
            label_names=["labels"],
            use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
        )
    except ValueError as exc:
        raise TrainingFailure(
            "invalid_spec", f"invalid hyperparameters: {exc}", "hyperparameters"
        ) from exc


def best_eval(state: TrainerState, task: str) -> tuple[int | None, dict[str, Any]]:
    """The step and metrics of the best evaluation (lowest eval_loss) in the Trainer's history."""
    evals = [entry for entry in state.log_history if "eval_loss" in entry]
    if not evals:
        return None, {}
    best_step = state.best_global_step
    best = next((entry for entry in evals if entry.get("step") == best_step), None)
    if best is None:
        best = min(evals, key=lambda entry: entry["eval_loss"])
    return int(best["step"]), eval_fields(best, task)


def file_emitter(events_path: Path) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """(emit, close): append one JSON line per event, flushed so the supervisor sees it now."""
    events_path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(events_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the caller

    def emit(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, allow_nan=False) + "\n")
        stream.flush()

    return emit, stream.close


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
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.training.run SPEC_JSON", file=sys.stderr)
        return 2
    try:
        spec = _read_spec(args[0])
        emit, close = file_emitter(Path(spec["events_path"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Without a readable spec there is no events file to report to.
        print(f"cannot read the trainer spec {args[0]!r}: {exc!r}", file=sys.stderr)
        return 1
    try:
        train(spec, emit)
        return 0
    except TrainingFailure as failure:
        if failure.code == "trainer_error" and failure.__cause__ is not None:
            traceback.print_exception(failure.__cause__, file=sys.stderr)
        return 1
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: still say so before dying
        emit({"type": "failed", "code": "trainer_error", "message": repr(exc), "param": None})
        raise
    finally:
        close()


if __name__ == "__main__":
    sys.exit(main())

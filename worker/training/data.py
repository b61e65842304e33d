"""Training data: read the files, carve a validation split, and find the labels (through the
job's task); encoding the rows is the task's (worker/training/plugin.py)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import task_plugins
from app.failures import Failure
from app.files.formats import DatasetError, read_examples
from app.jobs.spec import DataFile, TrainSpec
from worker.training.plugin import trainer_for

Row = dict[str, Any]


@dataclass
class Splits:
    train: list[Row]
    validation: list[Row]
    formats: set[str]
    # classification: the sorted label names; index = the model's label id
    labels: list[str] = field(default_factory=list)


def load_splits(spec: TrainSpec) -> Splits:
    """Read the training (and validation) file; carve a validation split when none is given."""
    trainer = trainer_for(spec.task)
    method = spec.method.type
    train_format, train_rows = _read(spec.train_file, spec.task, "training_file", method)
    hp = spec.hyperparameters
    if spec.validation_file is not None:
        val_format, validation = _read(spec.validation_file, spec.task, "validation_file", method)
        formats = {train_format, val_format}
        train = train_rows
        _check_few_rows(len(train), "the training file")
    else:
        formats = {train_format}
        if len(train_rows) < 3:
            raise Failure(
                "too_few_rows",
                f"{spec.train_file.filename} has {len(train_rows)} row(s); at least 3 are needed "
                "(2 to train on and 1 to validate), more for a useful model",
                "training_file",
            )
        train, validation = split_rows(
            train_rows, hp.validation_split, spec.seed, trainer.stratify_by
        )
        _check_few_rows(len(train), "the training split")
    labels = trainer.labels(spec, train, validation)
    return Splits(train, validation, formats, labels)


def _read(data_file: DataFile, task: str, param: str, method: str) -> tuple[str, list[Row]]:
    code = f"invalid_{param}"
    try:
        fmt, rows = read_examples(data_file.path, data_file.filename)
    except DatasetError as exc:
        raise Failure(code, f"{data_file.filename}: {exc}", param) from exc
    except OSError as exc:
        raise Failure(code, f"cannot read {data_file.filename}: {exc}", param) from exc
    allowed = task_plugins.get(task).formats_for(method)
    if fmt not in allowed:
        raise Failure(
            code,
            f"{data_file.filename} is in the {fmt} format; a {method} {task} job needs "
            f"{' or '.join(sorted(allowed))} rows",
            param,
        )
    return fmt, rows


def _check_few_rows(n: int, what: str) -> None:
    if n < 2:
        raise Failure(
            "too_few_rows",
            f"{what} has {n} row(s); at least 2 are needed to train, more for a useful model",
            "training_file",
        )


def sort_labels(labels: set[str]) -> list[str]:
    """A stable label order: numerically when every label is an integer ("2" before "10")."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def split_rows(
    rows: list[Row], fraction: float, seed: int, stratify_by: str | None = None
) -> tuple[list[Row], list[Row]]:
    """Seeded train/validation split with at least one validation row.

    Stratified by `stratify_by` when some class has two rows or more: each such class gives
    its share of the validation rows, at least one (so no class is missing from a small
    validation set, which can grow by a row per class whose share rounds to none), and always
    keeps one row for training. A class of a single row stays in training.
    """
    n_validation = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    rng = random.Random(seed)
    if stratify_by is not None:
        groups: dict[Any, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            groups[row[stratify_by]].append(index)
        if any(len(members) >= 2 for members in groups.values()):
            chosen = _stratified_pick(groups, n_validation, len(rows), rng)
            return _partition(rows, chosen)
    order = list(range(len(rows)))
    rng.shuffle(order)
    return _partition(rows, set(order[:n_validation]))


def _stratified_pick(
    groups: dict[Any, list[int]], n_validation: int, n_rows: int, rng: random.Random
) -> set[int]:
    keys = sorted(groups, key=str)
    for key in keys:
        rng.shuffle(groups[key])
    exact = {key: n_validation * len(groups[key]) / n_rows for key in keys}
    # every class that can spare a row shows up in validation; one of a single row cannot
    quota = {key: min(max(int(exact[key]), 1), len(groups[key]) - 1) for key in keys}
    # Hand out what rounding down left over, largest remainders first (then by name).
    by_remainder = sorted(keys, key=lambda key: (quota[key] - exact[key], str(key)))
    while sum(quota.values()) < n_validation:
        spare = [key for key in by_remainder if quota[key] < len(groups[key]) - 1]
        if not spare:
            break
        for key in spare[: n_validation - sum(quota.values())]:
            quota[key] += 1
    return {index for key in keys for index in groups[key][: quota[key]]}


def _partition(rows: list[Row], validation: set[int]) -> tuple[list[Row], list[Row]]:
    train = [row for index, row in enumerate(rows) if index not in validation]
    held_out = [row for index, row in enumerate(rows) if index in validation]
    return train, held_out


# ---- tokenizing ----

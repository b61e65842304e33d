"""The task interface: what one kind of training declares (torch-free).

A task package's `__init__.py` builds one `TaskPlugin` from plain data and torch-free
functions; the API imports it to validate uploads and job requests. Everything that needs
torch is named by a `"module:attribute"` string and imported only where it runs (the trainer
child, the evaluation child, the inference server), through `load_hook`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Row = dict[str, Any]
# The training method every task has; a method such as DPO adds its own key to `formats`.
SUPERVISED = "supervised"
# Preference tuning (Direct Preference Optimization), on the `preference` row format.
DPO = "dpo"


def _same(row: Row) -> Row:
    return row


def _no_overhead(row: Row) -> int:
    return 0


@dataclass(frozen=True)
class RowFormat:
    """A dataset layout of JSON lines (and CSV rows, when `csv`), detected by its keys.

    The generic reader (app/files/formats.py) streams the file, detects the format from the
    first row whose keys are exactly `columns`, and calls `check` on every row with those keys.
    """

    name: str
    # the exact keys of a row (the CSV header's columns), in the order messages show them
    columns: tuple[str, ...]
    # the first problem of a row that has exactly these keys, or None
    check: Callable[[Row], str | None]
    # the row as training reads it (e.g. a label made a string)
    normalize: Callable[[Row], Row] = _same
    # characters of text in a (valid) row: a cheap size estimate
    chars: Callable[[Row], int] = field(default=lambda row: 0)
    # tokens a row costs beyond its characters (role headers of chat messages, ...)
    token_overhead: Callable[[Row], int] = _no_overhead
    csv: bool = True
    # the column counted per value in the file's stats["labels"]
    label_key: str | None = None
    # a more helpful refusal than "unexpected key(s)" for some extra keys (None: the plain one)
    extra_keys_problem: Callable[[set[str]], str | None] | None = None
    # keys a row may have besides `columns` (`check` checks them; they do not detect the format)
    optional_keys: frozenset[str] = frozenset()
    # names of what a valid row uses (e.g. "tool_calls"), counted in the file's stats["features"]
    features: Callable[[Row], Iterable[str]] | None = None

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.columns)


class UploadRefused(ValueError):
    """An upload refused outright, before any report (a hostile archive): the files service
    deletes what was stored and answers 400 with this message."""


class FileKind(Protocol):
    """An upload that is not rows of JSON or CSV (a zip of images, say): it claims a file by
    its name or contents and reads it in its own way."""

    name: str

    def claims(self, path: Path, filename: str) -> bool: ...

    def inspect(
        self,
        path: Path,
        filename: str,
        max_errors: int,
        min_examples: int,
        settings: Any = None,
    ) -> Any:
        """An app.files.formats.FileReport; raises UploadRefused for an upload to refuse.
        `settings` (app.settings.Settings) holds the upload limits; None: this process's
        TUNERY_* environment."""
        ...

    def read(self, path: Path, filename: str) -> tuple[str, list[Row]]:
        """(format, examples) for training; raises app.files.formats.DatasetError."""
        ...

    def recheck(self, path: Path, settings: Any = None) -> None:
        """A stored copy of an upload that `inspect` passed, checked again as a job starts:
        what today's rules refuse without reading every example (a zip's hostile entries);
        raises UploadRefused."""
        ...


@dataclass(frozen=True)
class MetricSpec:
    """The figures an evaluation reports and how a job may use them."""

    # the figures a job may pick its best checkpoint by and stop early on (best_metric)
    selectable: tuple[str, ...]
    lower_is_better: frozenset[str] = frozenset({"eval_loss"})
    # scalar evaluation figures copied into a checkpoint's metrics, each under these names
    checkpoint: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # figures computed from the others once an evaluation is in (perplexity from eval_loss)
    derive: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda fields: {})
    # what a method other than supervised reports instead of `selectable` (DPO: its rewards)
    method_selectable: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def selectable_for(self, method: str = SUPERVISED) -> tuple[str, ...]:
        """The figures a job of this method may pick its best checkpoint by."""
        return tuple(self.method_selectable.get(method, self.selectable))

    @property
    def names(self) -> tuple[str, ...]:
        """Every figure some method of the task may pick by, each once."""
        every = (*self.selectable, *(n for m in self.method_selectable.values() for n in m))
        return tuple(dict.fromkeys(every))

    def is_better(self, metric: str, value: float, than: float, min_delta: float = 0.0) -> bool:
        if metric in self.lower_is_better:
            return value < than - min_delta
        return value > than + min_delta


@dataclass(frozen=True)
class PredictorHook:
    """How the inference server (worker/inference/) runs a model of this task.

    `engine` "batch": the requests on one base share forwards (batching.MicroBatcher), and the
    server calls the three `"module:function"` hooks:

    - `prepare(processor, inputs, config) -> rows`: one request's inputs tokenized or
      decoded, on the batcher's thread; raises PredictionInputError naming a bad input;
    - `forward(model, processor, rows, pad_id, extra) -> probabilities`: one forward over the
      rows of several requests (extra: peft's mixed-adapter arguments), a float tensor with
      a row of label probabilities per input, on the CPU;
    - `finish(probabilities, labels, top_k) -> output`: one row's prediction.

    `engine` "decode": generation, batched continuously token by token
    (scheduler.DecodeEngine, which owns its tokenizing, sampling and finishing).
    """

    engine: Literal["batch", "decode"]
    # the prediction's shape (a TypedDict)
    output: str
    # the request parameters it takes; any other is refused with a 400 naming it
    parameters: frozenset[str]
    # the kinds of input item it takes: "text" (a string), "chat" ({"messages": [...]}),
    # "image" ({"image": base64}), "audio" ({"audio": base64})
    inputs: frozenset[str]
    prepare: str | None = None
    forward: str | None = None
    finish: str | None = None
    streams: bool = False


@dataclass(frozen=True)
class ExportInfo:
    """What a download holds and how to load it again."""

    # the transformers class that loads the model (and the base under an adapter)
    auto_class: str
    # the Hub's pipeline tag in the model card
    pipeline_tag: str
    # whether tunery.json (and the loading code) carry the label names
    labels: bool = False
    # the transformers class that loads the inputs' processor saved with the model
    processor_class: str = "AutoTokenizer"


@dataclass(frozen=True)
class TaskPlugin:
    # the job's `task`, as the API shows it
    name: str
    # training method -> the formats a job of that method trains on
    formats: Mapping[str, tuple[str, ...]]
    # what a training file must hold, for error messages ("rows {...} or ...")
    format_hint: str
    # the row formats this package defines (other packages may train on them too)
    row_formats: tuple[RowFormat, ...]
    # which base models it takes: config.json's model_type ...
    model_types: frozenset[str]
    # ... or, failing that, an architecture name ending so (the longest match wins)
    architecture_suffixes: tuple[str, ...]
    metrics: MetricSpec
    # job defaults
    default_batch_size: int
    # per training type; qlora trains the same adapter as lora
    base_learning_rates: Mapping[str, float]
    # the hyperparameters only this task takes, with their defaults
    hyperparameters: Mapping[str, Any]
    # "module:attribute" of the worker's TaskTrainer (worker/training/plugin.py)
    trainer: str
    # "module:function" scoring a loaded model on rows (worker/evaluation)
    scorer: str
    predictor: PredictorHook
    export: ExportInfo
    file_kinds: tuple[FileKind, ...] = ()
    # per method other than supervised, per training type (DPO steps more gently)
    method_learning_rates: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # torch-free, at job creation: why the base model in this folder cannot render a file with
    # these stats (e.g. its "features": a chat template without tools), or None; the API
    # refuses the job with it (400, param model, code unsupported_chat_template)
    check_base: Callable[[Path, Mapping[str, Any]], str | None] | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.formats)

    def formats_for(self, method: str = SUPERVISED) -> tuple[str, ...]:
        return tuple(self.formats.get(method, ()))

    def base_learning_rate(self, training_type: str, method: str = SUPERVISED) -> float:
        rates = self.method_learning_rates.get(method, self.base_learning_rates)
        return rates["lora" if training_type == "qlora" else training_type]


def load_hook(path: str) -> Any:
    """The object a `"module:attribute"` string names (imports the module)."""
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ValueError(f"a hook is 'module:attribute', got {path!r}")
    return getattr(importlib.import_module(module), attribute)

"""Training data: read the files, carve a validation split, tokenize, pad batches."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from app.files.formats import CHAT, FORMATS_BY_TASK, DatasetError, read_examples
from worker.training.metrics import IGNORE_INDEX
from worker.training.spec import DataFile, TrainingFailure, TrainSpec

Row = dict[str, Any]
Features = dict[str, Any]

# Used when a causal LM's tokenizer has none; saved with the exported tokenizer so that
# inference renders chats exactly as training did.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class Splits:
    train: list[Row]
    validation: list[Row]
    formats: set[str]
    # classification: the sorted label names; index = the model's label id
    labels: list[str] = field(default_factory=list)


def load_splits(spec: TrainSpec) -> Splits:
    """Read the training (and validation) file; carve a validation split when none is given."""
    train_format, train_rows = _read(spec.train_file, spec.task, "training_file")
    hp = spec.hyperparameters
    if spec.validation_file is not None:
        val_format, validation = _read(spec.validation_file, spec.task, "validation_file")
        formats = {train_format, val_format}
        train = train_rows
        _check_few_rows(len(train), "the training file")
    else:
        formats = {train_format}
        if len(train_rows) < 3:
            raise TrainingFailure(
                "too_few_rows",
                f"{spec.train_file.filename} has {len(train_rows)} row(s); at least 3 are needed "
                "(2 to train on and 1 to validate), more for a useful model",
                "training_file",
            )
        by = "label" if spec.task == "classification" else None
        train, validation = split_rows(train_rows, hp.validation_split, spec.seed, by)
        _check_few_rows(len(train), "the training split")
    labels: list[str] = []
    if spec.task == "classification":
        labels = sort_labels({row["label"] for row in train})
        if spec.validation_file is not None:
            unknown = sort_labels({row["label"] for row in validation} - set(labels))
            if unknown:
                raise TrainingFailure(
                    "invalid_validation_file",
                    f"{spec.validation_file.filename} has label(s) that the training file does "
                    f"not: {', '.join(unknown)}; add examples of them to the training file or "
                    "remove them",
                    "validation_file",
                )
        else:
            # Labels only in the carved validation rows still get an id, so every row scores.
            labels = sort_labels({row["label"] for row in train + validation})
    return Splits(train, validation, formats, labels)


def _read(data_file: DataFile, task: str, param: str) -> tuple[str, list[Row]]:
    code = f"invalid_{param}"
    try:
        fmt, rows = read_examples(data_file.path, data_file.filename)
    except DatasetError as exc:
        raise TrainingFailure(code, f"{data_file.filename}: {exc}", param) from exc
    except OSError as exc:
        raise TrainingFailure(code, f"cannot read {data_file.filename}: {exc}", param) from exc
    allowed = FORMATS_BY_TASK[task]
    if fmt not in allowed:
        raise TrainingFailure(
            code,
            f"{data_file.filename} is in the {fmt} format; a {task} job needs "
            f"{' or '.join(sorted(allowed))} rows",
            param,
        )
    return fmt, rows


def _check_few_rows(n: int, what: str) -> None:
    if n < 2:
        raise TrainingFailure(
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

    Stratified by `stratify_by` when some class has two rows or more: each class gives its
    share of the validation rows but always keeps one row for training.
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
    quota = {key: min(int(exact[key]), len(groups[key]) - 1) for key in keys}
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


@dataclass
class Encoded:
    features: list[Features]
    truncated: int = 0
    # causal LM rows whose trainable tokens were all cut off by truncation
    dropped: int = 0


def encode_classification(
    rows: list[Row], tokenizer: PreTrainedTokenizerBase, label_ids: dict[str, int], max_length: int
) -> Encoded:
    texts = [row["text"] for row in rows]
    full = tokenizer(texts, truncation=False)
    keep = [name for name in tokenizer.model_input_names if name in full]
    encoded = Encoded([])
    for index, row in enumerate(rows):
        features = {name: full[name][index] for name in keep}
        if len(features["input_ids"]) > max_length:
            # Re-tokenize with truncation so special tokens ([SEP], ...) stay at the end.
            encoded.truncated += 1
            cut = tokenizer(row["text"], truncation=True, max_length=max_length)
            features = {name: cut[name] for name in keep}
        features["labels"] = label_ids[row["label"]]
        encoded.features.append(features)
    return encoded


def encode_causal(
    rows: list[Row],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    train_on_inputs: bool = False,
) -> Encoded:
    """input_ids, attention_mask and labels (IGNORE_INDEX where no loss is taken).

    The loss is on completions / assistant turns only, unless `train_on_inputs` puts it on
    every token (prompts, system and user turns too).
    """
    encoded = Encoded([])
    for row in rows:
        if "messages" in row:
            input_ids, labels = _chat_tokens(row["messages"], tokenizer)
        else:
            input_ids, labels = _prompt_completion_tokens(row, tokenizer)
        if train_on_inputs:
            labels = list(input_ids)
        if len(input_ids) > max_length:
            encoded.truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        # Position 0 never has a loss (nothing predicts it), so a row needs a label after it.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            encoded.dropped += 1
            continue
        encoded.features.append(
            {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
        )
    return encoded


def _prompt_completion_tokens(
    row: Row, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    # The prompt gets the tokenizer's special prefix (a BOS for Llama); the completion none.
    prompt = list(tokenizer(row["prompt"])["input_ids"])
    completion = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion.append(int(tokenizer.eos_token_id))
    return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion


def _chat_tokens(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """Tokens of the rendered chat, with labels only on the assistant messages' tokens."""

    def render(prefix: list[dict[str, str]], generation_prompt: bool = False) -> str:
        text = tokenizer.apply_chat_template(
            prefix, tokenize=False, add_generation_prompt=generation_prompt
        )
        return str(text)

    text = render(messages)
    spans = assistant_spans(messages, text, render)
    # The template already writes any BOS/EOS it wants, so add none here.
    if tokenizer.is_fast:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        offsets = encoding["offset_mapping"]
        labels = [
            token
            if any(start < span_end and end > span_start for span_start, span_end in spans)
            else IGNORE_INDEX
            for token, (start, end) in zip(input_ids, offsets, strict=True)
        ]
        return input_ids, labels
    input_ids, labels = [], []
    cursor = 0
    for span_start, span_end in [*spans, (len(text), len(text))]:
        for piece, trained in ((text[cursor:span_start], False), (text[span_start:span_end], True)):
            ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        cursor = span_end
    return input_ids, labels


def assistant_spans(
    messages: list[dict[str, str]], text: str, render: Callable[..., str]
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in `text` (the rendered chat).

    Rendering the chat up to each assistant turn tells where the turn starts (after the
    generation prompt, so the role header is not learned) and ends (including what the
    template writes after it, e.g. EOS, so the model learns to stop). Templates whose
    renders are not prefixes of each other fall back to finding the content itself.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = end = None
        through = _safe_render(render, messages[: index + 1], False)
        if through is not None and text.startswith(through):
            end = len(through)
            for generation_prompt in (True, False):
                before = _safe_render(render, messages[:index], generation_prompt)
                if before is not None and through.startswith(before) and cursor <= len(before):
                    start = len(before)
                    break
        if start is None or end is None:
            found = text.find(message["content"], cursor)
            if found < 0:
                continue
            start, end = found, found + len(message["content"])
        if end > start:
            spans.append((start, end))
        cursor = end
    return spans


def _safe_render(
    render: Callable[..., str], prefix: list[dict[str, str]], generation_prompt: bool
) -> str | None:
    if not prefix:
        return "" if not generation_prompt else None
    try:
        return render(prefix, generation_prompt)
    except Exception:
        # Some templates refuse partial chats (e.g. "must end with an assistant turn").
        return None


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase, formats: set[str], note: Callable[[str, str], None]
) -> None:
    """Give a tokenizer what training needs: a pad token, and a chat template for chats."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainingFailure(
                "invalid_base_model",
                "the base model's tokenizer has neither a pad nor an eos token",
            )
        tokenizer.pad_token = tokenizer.eos_token
        note("info", "the tokenizer has no pad token; padding with its eos token")
    if CHAT in formats and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        note(
            "info",
            "the tokenizer has no chat template; using a simple default, saved with the model",
        )
    # Training pads on the right so that position ids and the label shift stay aligned.
    tokenizer.padding_side = "right"


class ListDataset(torch.utils.data.Dataset[Features]):
    def __init__(self, features: Sequence[Features]) -> None:
        self.features = list(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Features:
        return self.features[index]


class PadCollator:
    """Pad a batch on the right: pad id for input ids, 0 for masks, IGNORE_INDEX for labels."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_values = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}

    def __call__(self, batch: list[Features]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in batch[0]:
            values = [features[name] for features in batch]
            if not isinstance(values[0], list):
                out[name] = torch.tensor(values, dtype=torch.long)
                continue
            width = max(len(value) for value in values)
            pad = self.pad_values.get(name, 0)
            out[name] = torch.tensor(
                [value + [pad] * (width - len(value)) for value in values], dtype=torch.long
            )
        return out

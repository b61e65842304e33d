"""The body of POST /v1/fine_tuning/jobs from `tunery jobs create` flags and/or a spec file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tunery_client.api import ClientError

# flag name (argparse dest) -> hyperparameter name
HYPERPARAMETER_FLAGS = {
    "n_epochs": "n_epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "learning_rate_multiplier": "learning_rate_multiplier",
    "max_seq_length": "max_seq_length",
    "validation_split": "validation_split",
}
LORA_FLAGS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def float_or_auto(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, help="a YAML or JSON file with the job body")
    parser.add_argument("--model", "-m", help="base model id (tunery models list)")
    parser.add_argument("--training-file", "-t", help="file id of the training data")
    parser.add_argument("--validation-file", "-v", help="file id of the validation data")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--suffix", help="goes into the fine-tuned model's name")
    parser.add_argument(
        "--metadata", action="append", metavar="KEY=VALUE", default=[], help="repeatable"
    )
    hp = parser.add_argument_group("hyperparameters")
    hp.add_argument("--n-epochs", type=int_or_auto)
    hp.add_argument("--batch-size", type=int_or_auto)
    hp.add_argument("--learning-rate", type=float)
    hp.add_argument("--learning-rate-multiplier", type=float_or_auto)
    hp.add_argument("--max-seq-length", type=int)
    hp.add_argument("--validation-split", type=float)
    hp.add_argument(
        "--hyperparameter",
        "-H",
        action="append",
        metavar="NAME=VALUE",
        default=[],
        help="any other hyperparameter (e.g. warmup_ratio=0.1); repeatable",
    )
    tt = parser.add_argument_group("training type")
    tt.add_argument("--training-type", choices=["lora", "full", "freeze"])
    tt.add_argument("--lora-r", type=int)
    tt.add_argument("--lora-alpha", type=float)
    tt.add_argument("--lora-dropout", type=float)
    tt.add_argument("--target-modules", help='comma-separated module names, or "all-linear" (LoRA)')
    tt.add_argument("--trainable-layers", type=int, help="top blocks trained (freeze)")


def load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"Cannot read the spec file {path}: {exc.strerror or exc}.") from exc
    data: Any
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ClientError(f"{path} is not valid JSON: {exc}.") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ClientError(f"{path} is not valid YAML (or JSON): {exc}.") from exc
    if not isinstance(data, dict):
        raise ClientError(
            f"{path} must hold one mapping, the job body (model, training_file, ...); "
            f"it holds a {type(data).__name__}."
        )
    return data


def parse_pairs(items: list[str], flag: str, parse_values: bool = True) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ClientError(f"{flag} takes NAME=VALUE; got {item!r}.")
        value: Any = raw
        if parse_values:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        pairs[name.strip()] = value
    return pairs


def build_job(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = load_spec(args.spec) if args.spec else {}
    for name in ("model", "training_file", "validation_file", "seed", "suffix"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.metadata:
        metadata = dict(body.get("metadata") or {})
        metadata.update(parse_pairs(args.metadata, "--metadata", parse_values=False))
        body["metadata"] = metadata

    hyper = {hp: getattr(args, dest) for dest, hp in HYPERPARAMETER_FLAGS.items()}
    hyper = {k: v for k, v in hyper.items() if v is not None}
    hyper.update(parse_pairs(args.hyperparameter, "--hyperparameter"))
    if hyper:
        _hyperparameters_of(body).update(hyper)

    training_type = _training_type(args, body.get("training_type"))
    if training_type is not None:
        body["training_type"] = training_type

    for name, flag in (("model", "--model"), ("training_file", "--training-file")):
        if not body.get(name):
            raise ClientError(f"Give {flag} (or `{name}` in the --spec file).")
    return body


def _hyperparameters_of(body: dict[str, Any]) -> dict[str, Any]:
    """Where the body keeps its hyperparameters: method.<type> (OpenAI's current shape:
    method.supervised, or method.dpo for a DPO job), unless the spec file used the older
    top-level `hyperparameters`."""
    if "hyperparameters" in body and "method" not in body:
        top: dict[str, Any] = dict(body["hyperparameters"] or {})
        body["hyperparameters"] = top
        return top
    method = body.setdefault("method", {"type": "supervised"})
    settings = method.setdefault(str(method.get("type") or "supervised"), {})
    hp: dict[str, Any] = dict(settings.get("hyperparameters") or {})
    settings["hyperparameters"] = hp
    return hp


def _training_type(args: argparse.Namespace, current: Any) -> dict[str, Any] | None:
    lora = {key: getattr(args, dest) for dest, key in LORA_FLAGS.items()}
    lora = {k: v for k, v in lora.items() if v is not None}
    if args.target_modules is not None:
        modules = args.target_modules.strip()
        lora["target_modules"] = (
            modules if modules == "all-linear" else [m.strip() for m in modules.split(",") if m]
        )
    freeze = {} if args.trainable_layers is None else {"trainable_layers": args.trainable_layers}
    kind = args.training_type
    if kind is None and not lora and not freeze:
        return None
    existing = dict(current) if isinstance(current, dict) else {}
    if kind is None:
        kind = "lora" if lora else "freeze"
        if lora and freeze:
            raise ClientError(
                "--lora-* / --target-modules and --trainable-layers exclude each other."
            )
    if lora and kind != "lora":
        raise ClientError(
            f"--lora-* and --target-modules apply to LoRA, not --training-type {kind}."
        )
    if freeze and kind != "freeze":
        raise ClientError(f"--trainable-layers applies to --training-type freeze, not {kind}.")
    result = existing if existing.get("type") == kind else {}
    result["type"] = kind
    result.update(lora)
    result.update(freeze)
    return result

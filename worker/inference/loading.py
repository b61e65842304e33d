"""Turn a model spec into a model and tokenizer ready to predict.

A spec names a base model directory and, optionally, a trained artifact in the store whose
`tunery.json` says whether it is a PEFT adapter or a full model (docs/internals.md). Every
directory is checked before transformers sees it: weights must be safetensors and no
custom code may ride along, because a model directory is user-influenced data and
unpickling or importing it would run arbitrary code in the server.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from app.storage import ArtifactStore

Task = Literal["classification", "causal-lm"]
TASKS: tuple[Task, ...] = ("classification", "causal-lm")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "tunery.json"


class ModelLoadError(Exception):
    """A model that cannot be served; the message says why and is shown to the caller."""


@dataclass(frozen=True)
class ModelSpec:
    key: str
    task: Task
    base_model_dir: str
    artifact: str | None = None


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    model: Any  # a transformers PreTrainedModel or a PeftModel wrapping one
    tokenizer: Any
    format: Literal["base", "adapter", "full"]
    device: torch.device
    dtype: torch.dtype
    memory_bytes: int
    load_seconds: float
    # torch modules are not safe to run from two threads at once, and on CPU one forward at a
    # time already uses every core; requests for the same model queue on this lock.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def pick_device() -> tuple[torch.device, torch.dtype]:
    """cuda in bf16 when the GPU supports it; otherwise fp32 (fp16 overflows too easily)."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def load_model(spec: ModelSpec, store: ArtifactStore) -> LoadedModel:
    """Load what `spec` names; raises ModelLoadError with the reason on any failure."""
    started = time.perf_counter()
    device, dtype = pick_device()
    try:
        model, tokenizer, fmt = _load(spec, store, dtype)
        model.to(device)
        model.eval()
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers/peft/torch raise many types; all mean "cannot serve"
        raise ModelLoadError(f"cannot load model {spec.key!r}: {_short(exc)}") from exc
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        format=fmt,
        device=device,
        dtype=dtype,
        memory_bytes=model_memory_bytes(model),
        load_seconds=time.perf_counter() - started,
    )


def model_memory_bytes(model: torch.nn.Module) -> int:
    # parameters() and buffers() skip shared tensors, so tied embeddings count once
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _load(
    spec: ModelSpec, store: ArtifactStore, dtype: torch.dtype
) -> tuple[Any, Any, Literal["base", "adapter", "full"]]:
    if spec.task not in TASKS:
        raise ModelLoadError(f"unknown task {spec.task!r}; expected one of {list(TASKS)}")
    base_dir = Path(spec.base_model_dir)
    if not base_dir.is_absolute() or not base_dir.is_dir():
        raise ModelLoadError(f"base model directory {spec.base_model_dir!r} does not exist")

    if spec.artifact is None:
        check_model_dir(base_dir)
        model = load_base(spec.task, base_dir, dtype, labels=None)
        return model, load_tokenizer(base_dir, model), "base"

    artifact_dir = resolve_artifact(store, spec.artifact)
    manifest = read_manifest(artifact_dir, spec)
    labels = manifest.get("labels") if spec.task == "classification" else None
    tokenizer_dir = artifact_dir if has_tokenizer(artifact_dir) else base_dir
    check_no_custom_code(tokenizer_dir)

    if manifest["format"] == "full":
        check_model_dir(artifact_dir)
        model = _auto_class(spec.task).from_pretrained(artifact_dir, **_safe_kwargs(dtype))
        return model, load_tokenizer(tokenizer_dir, model), "full"

    check_model_dir(base_dir)
    check_adapter_dir(artifact_dir)
    if spec.task == "classification" and not labels:
        raise ModelLoadError(
            f"{MANIFEST} of classification adapter {spec.artifact!r} lists no labels"
        )
    base = load_base(spec.task, base_dir, dtype, labels=labels)
    # The seam for sharing one base between several adapters: cache `base` by
    # (task, base_model_dir, labels) and attach each adapter under its own adapter_name.
    model = attach_adapter(base, artifact_dir, spec.artifact)
    return model, load_tokenizer(tokenizer_dir, model), "adapter"


def resolve_artifact(store: ArtifactStore, key: str) -> Path:
    try:
        present = store.exists(f"{key}/{MANIFEST}")
    except ValueError as exc:  # the store refuses keys that escape its root
        raise ModelLoadError(str(exc)) from exc
    if not present:
        raise ModelLoadError(f"artifact {key!r} not found (no {MANIFEST} under it in the store)")
    return store.local_dir(key)


def read_manifest(artifact_dir: Path, spec: ModelSpec) -> dict[str, Any]:
    try:
        manifest = json.loads((artifact_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {MANIFEST} of {spec.artifact!r}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in ("adapter", "full"):
        raise ModelLoadError(f"{MANIFEST} of {spec.artifact!r} must say format 'adapter' or 'full'")
    if manifest.get("task", spec.task) != spec.task:
        raise ModelLoadError(
            f"artifact {spec.artifact!r} was trained for task {manifest['task']!r}, "
            f"but the spec asks for {spec.task!r}"
        )
    labels = manifest.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(x, str | int) for x in labels)
    ):
        raise ModelLoadError(f"{MANIFEST} of {spec.artifact!r}: labels must be a list of strings")
    return manifest


def check_no_custom_code(directory: Path) -> None:
    code = sorted(p.name for p in directory.rglob("*.py"))
    if code:
        raise ModelLoadError(
            f"{directory} contains Python files ({', '.join(code[:5])}); "
            "custom model code is never run (trust_remote_code is off)"
        )
    for name in ("config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
            if isinstance(data, dict) and data.get("auto_map"):
                raise ModelLoadError(
                    f"{path} has an auto_map (custom code); only built-in architectures are served"
                )


def check_model_dir(directory: Path) -> None:
    check_no_custom_code(directory)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} has no config.json; it is not a transformers model")
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{directory} holds only pickle weights ({', '.join(pickles[:3])}); "
            "convert them to safetensors (pickle files are never loaded)"
        )
    raise ModelLoadError(f"{directory} has no model weights (*.safetensors)")


def check_adapter_dir(directory: Path) -> None:
    check_no_custom_code(directory)
    if not (directory / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {directory} has no adapter_config.json")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        if any(p.suffix in PICKLE_SUFFIXES for p in directory.iterdir()):
            raise ModelLoadError(
                f"adapter {directory} holds only pickle weights; save it with safetensors"
            )
        raise ModelLoadError(f"adapter {directory} has no {ADAPTER_WEIGHTS}")


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def _auto_class(task: Task) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM


def _safe_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    return {"use_safetensors": True, "trust_remote_code": False, "dtype": dtype}


def load_base(task: Task, base_dir: Path, dtype: torch.dtype, labels: list[Any] | None) -> Any:
    kwargs = _safe_kwargs(dtype)
    if labels:
        names = [str(x) for x in labels]
        kwargs |= {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }
    return _auto_class(task).from_pretrained(base_dir, **kwargs)


def attach_adapter(base: Any, adapter_dir: Path, name: str) -> Any:
    """Wrap base with the adapter in adapter_dir, refusing any adapter that does not fit it.

    peft raises on a size mismatch, but only warns about missing keys and ignores unexpected
    ones; either would quietly serve the base model under the adapter's name. So the
    adapter's saved tensors are compared with what the wrapped model expects, name by name.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # size mismatches, target modules absent from the base, bad config
        raise ModelLoadError(
            f"adapter {name!r} does not fit its base model: {_short(exc)}"
        ) from exc
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as fh:
        saved = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118

    problems = []
    if missing := sorted(expected.keys() - saved.keys()):
        problems.append(f"{len(missing)} tensors missing from the adapter, e.g. {missing[0]}")
    if unexpected := sorted(saved.keys() - expected.keys()):
        problems.append(
            f"{len(unexpected)} adapter tensors match nothing in the base, e.g. {unexpected[0]}"
        )
    for key in sorted(expected.keys() & saved.keys()):
        if expected[key] != saved[key]:
            problems.append(
                f"{key} has shape {list(saved[key])}, the base needs {list(expected[key])}"
            )
            break
    if problems:
        raise ModelLoadError(
            f"adapter {name!r} does not match its base model: " + "; ".join(problems)
        )
    return model


def load_tokenizer(directory: Path, model: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    if tokenizer.pad_token is None:
        # batching needs a pad token; decoders often ship without one and eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config = model.config
    if getattr(config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # sequence classification on a decoder finds the last real token through pad_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _short(exc: BaseException, limit: int = 1000) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

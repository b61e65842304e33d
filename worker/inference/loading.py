"""Turn a model spec into weights in memory: a shared base, and what runs on top of it.

A spec names a base model directory and, optionally, a trained artifact in the store whose
`tunery.json` says whether it is a PEFT adapter or a full model (docs/internals.md). Every
directory is checked before transformers sees it: weights must be safetensors and no
custom code may ride along, because a model directory is user-influenced data and
unpickling or importing it would run arbitrary code in the server.

Loading is split in two so that adapters share their base: `plan` reads and checks what a
spec names (cheap, no weights), `load_shared` loads the weights that can be shared (a base
model, or a full fine-tuned model that shares with nobody), and `load_served` puts the
spec's model on a shared one (attaching the adapter, loading the tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import task_plugins
from app.model_safety import UnsafeModel, check_model_folder
from app.storage import ArtifactStore
from worker.inference.errors import ModelLoadError, short_error
from worker.inference.shared import SharedModel, model_memory_bytes

# a task plugin's name (task_plugins.names())
Task = str
PROCESSOR_FILE = "preprocessor_config.json"
Format = Literal["base", "adapter", "full"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# what a tokenizer is made of: two directories with equal copies of these load equal tokenizers
TOKENIZER_PARTS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "tunery.json"

__all__ = ["LoadPlan", "LoadedModel", "ModelLoadError", "ModelSpec", "SharedModel", "plan"]


@dataclass(frozen=True)
class ModelSpec:
    key: str
    task: Task
    base_model_dir: str
    artifact: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """What a spec names, checked: which weights to share and what goes on top of them."""

    spec: ModelSpec
    format: Format
    # models with equal shared keys run on one copy of the weights
    shared_key: str
    weights_dir: Path  # the base model, or the full model's own directory
    tokenizer_dir: Path
    adapter_dir: Path | None
    # classification only: the label names, index = label id
    labels: list[str] | None
    num_labels: int | None


class SharedTokenizer:
    """A tokenizer that every model with the same tokenizer files uses (a fast tokenizer of
    a large vocabulary takes ~10 MB; ten adapters of a base all carry the same one), and the
    lock that keeps two threads from tokenizing with it at once (a fast tokenizer's settings
    live in Rust and are not safe to change from two threads)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lock = threading.Lock()


_tokenizers: weakref.WeakValueDictionary[str, SharedTokenizer] = weakref.WeakValueDictionary()
_tokenizers_lock = threading.Lock()


@dataclass(eq=False)
class LoadedModel:
    """A servable model: a shared copy of weights plus, for an adapter, its adapter name."""

    spec: ModelSpec
    format: Format
    shared: SharedModel
    adapter_name: str | None  # None runs the shared model without any adapter
    shared_tokenizer: SharedTokenizer
    labels: list[str] | None
    # the memory this model adds to its shared model: an adapter's own tensors, else 0
    own_memory_bytes: int
    load_seconds: float = 0.0

    @property
    def tokenizer(self) -> Any:
        return self.shared_tokenizer.tokenizer

    @property
    def tokenizer_lock(self) -> threading.Lock:
        return self.shared_tokenizer.lock

    @property
    def memory_bytes(self) -> int:
        """What the cache counts for this model alone; the shared model is counted once."""
        return self.own_memory_bytes

    @property
    def device(self) -> torch.device:
        return self.shared.device

    @property
    def dtype(self) -> torch.dtype:
        return self.shared.dtype


def pick_device() -> tuple[torch.device, torch.dtype]:
    """cuda in bf16 when the GPU supports it; otherwise fp32 (fp16 overflows too easily)."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def plan(spec: ModelSpec, store: ArtifactStore) -> LoadPlan:
    """Check everything a spec names without loading weights; raises ModelLoadError."""
    if spec.task not in task_plugins.names():
        raise ModelLoadError(
            f"unknown task {spec.task!r}; expected one of {list(task_plugins.names())}"
        )
    base_dir = Path(spec.base_model_dir)
    if not base_dir.is_absolute() or not base_dir.is_dir():
        raise ModelLoadError(f"base model directory {spec.base_model_dir!r} does not exist")

    if spec.artifact is None:
        check_model_dir(base_dir)
        labels = base_labels(base_dir) if has_labels(spec.task) else None
        return _plan(spec, "base", base_dir, base_dir, None, labels)

    artifact_dir = resolve_artifact(store, spec.artifact)
    manifest = read_manifest(artifact_dir, spec)
    labels = None
    if has_labels(spec.task) and manifest.get("labels"):
        labels = [str(x) for x in manifest["labels"]]
    tokenizer_dir = artifact_dir if has_tokenizer(artifact_dir, spec.task) else base_dir
    check_safe(tokenizer_dir)

    if manifest["format"] == "full":
        check_model_dir(artifact_dir)
        if has_labels(spec.task) and labels is None:
            labels = base_labels(artifact_dir)
        return _plan(spec, "full", artifact_dir, tokenizer_dir, None, labels)

    check_model_dir(base_dir)
    check_adapter_dir(artifact_dir)
    if has_labels(spec.task) and not labels:
        raise ModelLoadError(f"{MANIFEST} of {spec.task} adapter {spec.artifact!r} lists no labels")
    return _plan(spec, "adapter", base_dir, tokenizer_dir, artifact_dir, labels)


def _plan(
    spec: ModelSpec,
    fmt: Format,
    weights_dir: Path,
    tokenizer_dir: Path,
    adapter_dir: Path | None,
    labels: list[str] | None,
) -> LoadPlan:
    num_labels = len(labels) if labels is not None else None
    if fmt == "full":
        # a full model's weights are its own: nothing else runs on them
        shared_key = f"full:{spec.task}:{weights_dir}"
    else:
        # A classification head's shape is the label count, so bases are shared between the
        # adapters (and the bare base) with the same number of labels; the encoder is most
        # of the memory, but the head is part of the base module that adapters wrap.
        shared_key = f"base:{spec.task}:{weights_dir}"
        if num_labels is not None:
            shared_key += f":{num_labels}-labels"
    return LoadPlan(
        spec=spec,
        format=fmt,
        shared_key=shared_key,
        weights_dir=weights_dir,
        tokenizer_dir=tokenizer_dir,
        adapter_dir=adapter_dir,
        labels=labels,
        num_labels=num_labels,
    )


def load_shared(
    load: LoadPlan, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> SharedModel:
    """The weights `load` shares with others, on the serving device."""
    started = time.perf_counter()
    if device is None or dtype is None:
        device, dtype = pick_device()
    try:
        model = load_weights(load.spec.task, load.weights_dir, dtype, load.num_labels)
        model.to(device)
        model.eval()
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers/torch raise many types; all mean "cannot serve"
        raise ModelLoadError(f"cannot load model {load.spec.key!r}: {short_error(exc)}") from exc
    return SharedModel(
        key=load.shared_key,
        task=load.spec.task,
        model=model,
        device=device,
        dtype=dtype,
        memory_bytes=model_memory_bytes(model),
        load_seconds=time.perf_counter() - started,
    )


def load_served(load: LoadPlan, shared: SharedModel) -> LoadedModel:
    """Put `load`'s model on `shared`: attach the adapter, load the tokenizer."""
    started = time.perf_counter()
    adapter_name = None
    own_bytes = 0
    try:
        if uses_processor(load.spec.task):
            tokenizer = SharedTokenizer(load_processor(load.tokenizer_dir, load.spec.task))
        else:
            tokenizer = tokenizer_of(load.tokenizer_dir, shared.model)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {load.spec.key!r}: {short_error(exc)}"
        ) from exc
    if load.adapter_dir is not None:
        adapter_name, own_bytes = shared.attach(load.adapter_dir, str(load.spec.artifact))
    return LoadedModel(
        spec=load.spec,
        format=load.format,
        shared=shared,
        adapter_name=adapter_name,
        shared_tokenizer=tokenizer,
        labels=load.labels,
        own_memory_bytes=own_bytes,
        load_seconds=time.perf_counter() - started,
    )


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


def base_labels(model_dir: Path) -> list[str]:
    """Label names a classification model directory's config declares (LABEL_0.. by default)."""
    config = json.loads((model_dir / "config.json").read_text())
    id2label = config.get("id2label") if isinstance(config, dict) else None
    if isinstance(id2label, dict) and id2label:
        try:
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            pass
    count = config.get("num_labels") if isinstance(config, dict) else None
    return [f"LABEL_{i}" for i in range(count if isinstance(count, int) and count > 0 else 2)]


def check_safe(directory: Path) -> None:
    """The rules every model folder meets before it loads (app/model_safety.py, which the
    trainer applies too): no custom code, no pickle-only weights."""
    try:
        check_model_folder(directory)
    except UnsafeModel as exc:
        raise ModelLoadError(str(exc)) from exc


def check_model_dir(directory: Path) -> None:
    check_safe(directory)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} has no config.json; it is not a transformers model")
    if not any(directory.glob("*.safetensors")):
        raise ModelLoadError(f"{directory} has no model weights (*.safetensors)")


def check_adapter_dir(directory: Path) -> None:
    check_safe(directory)
    if not (directory / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {directory} has no adapter_config.json")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"adapter {directory} has no {ADAPTER_WEIGHTS}")


def uses_processor(task: Task) -> bool:
    """Whether the task's inputs go through an image processor or feature extractor saved
    with the model (its plugin's export.processor_class), rather than a tokenizer."""
    return task_plugins.get(task).export.processor_class != "AutoTokenizer"


def has_tokenizer(directory: Path, task: Task = "classification") -> bool:
    if uses_processor(task):
        return (directory / PROCESSOR_FILE).is_file()
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def has_labels(task: Task) -> bool:
    return task in task_plugins.names() and task_plugins.get(task).export.labels


def auto_class(task: Task) -> Any:
    import transformers

    return getattr(transformers, task_plugins.get(task).export.auto_class)


def load_processor(directory: Path, task: Task) -> Any:
    """The image processor or feature extractor saved with an image or audio model."""
    import transformers

    loader = getattr(transformers, task_plugins.get(task).export.processor_class)
    return loader.from_pretrained(directory, trust_remote_code=False)


def safe_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    return {"use_safetensors": True, "trust_remote_code": False, "dtype": dtype}


def load_weights(task: Task, model_dir: Path, dtype: torch.dtype, num_labels: int | None) -> Any:
    """A transformers model from a checked directory. Label names are not set here: models
    sharing these weights each bring their own (LoadedModel.labels)."""
    kwargs = safe_kwargs(dtype)
    if num_labels is not None and has_labels(task):
        config = json.loads((model_dir / "config.json").read_text())
        declared = len(config.get("id2label") or {}) or config.get("num_labels")
        if declared != num_labels:
            kwargs["num_labels"] = num_labels
    return auto_class(task).from_pretrained(model_dir, **kwargs)


def tokenizer_of(directory: Path, model: Any) -> SharedTokenizer:
    """The tokenizer in directory, shared with every model whose tokenizer files are equal
    and whose model type is the same: AutoTokenizer picks the tokenizer class by model type,
    and equal files load as different tokenizers under, say, Llama and Qwen2."""
    digest = hashlib.sha256(str(getattr(model.config, "model_type", "")).encode() + b"\0")
    for name in TOKENIZER_PARTS:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    key = digest.hexdigest()
    with _tokenizers_lock:
        found = _tokenizers.get(key)
    if found is None:
        found = SharedTokenizer(load_tokenizer(directory, model))
        with _tokenizers_lock:
            found = _tokenizers.setdefault(key, found)
    fix_pad_token_id(model, found.tokenizer)
    return found


def load_tokenizer(directory: Path, model: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    if tokenizer.pad_token is None:
        # batching needs a pad token; decoders often ship without one and eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    fix_pad_token_id(model, tokenizer)
    return tokenizer


def fix_pad_token_id(model: Any, tokenizer: Any) -> None:
    config = model.config
    if getattr(config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # sequence classification on a decoder finds the last real token through pad_token_id
        config.pad_token_id = tokenizer.pad_token_id

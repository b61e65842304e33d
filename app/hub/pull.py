"""Pulling a base model from the Hugging Face Hub into TUNERY_MODELS_DIR.

Torch-free and database-free: plain arguments and a progress callback, so the API's pull
thread and a worker (auto-pull before a job) run the same code.

Two steps. `plan` asks the Hub for the revision's commit sha and file listing, refuses what
the model-safety rules refuse (custom code, pickle-only weights: app/model_safety.py) before
anything is downloaded, fetches the small JSON configs and checks them (auto_map, a task
Tunery can tune), and checks that the allow-listed files fit on the disk. `download` then
fetches the allow-listed files of that pinned sha with snapshot_download into a hidden
staging folder (`.pulls/` in TUNERY_MODELS_DIR, which the registry never lists), checks the
whole folder once more and moves it into place: a half-pulled model is never visible.

A pull that stops (a dropped connection, a stopped process) leaves its finished files in the
staging folder; the next pull of the same sha downloads only the rest, and a connection cut
in the middle of a file resumes with a Range request.

HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured as huggingface_hub reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import disable_progress_bars

import task_plugins
from app.failures import APIError
from app.model_safety import CODE_CONFIGS, UnsafeModel, check_listing, check_model_folder
from app.models.registry import PULL_MARKER, BaseModel, pulled_sha, resolve_base_model

# the server logs; a pull's progress is reported through its callback instead
disable_progress_bars()

STAGING_DIRNAME = ".pulls"
MARKER = PULL_MARKER
# what from_pretrained reads besides the weights: configs, tokenizers, processors
CONFIG_FILES = frozenset(
    {
        *CODE_CONFIGS,
        "generation_config.json",
        "tokenizer.json",
        "tokenizer.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        "image_processor_config.json",
        "video_preprocessor_config.json",
        "model.safetensors.index.json",
    }
)

Progress = Callable[[int, int], None]  # (bytes on disk, files done)


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int


@dataclass(frozen=True)
class Plan:
    """What a pull fetches, decided before any weight moves."""

    model: str
    revision: str
    sha: str
    files: tuple[HubFile, ...]
    task: str
    model_type: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def allowed(name: str) -> bool:
    """The allow-list: top-level configs, tokenizer and processor files, and safetensors."""
    return "/" not in name and (name.endswith(".safetensors") or name in CONFIG_FILES)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def model_dir(models_dir: Path, model: str) -> Path:
    """Where a pulled model lives: its Hub id as a path (org/name), which the registry
    lists under the same id."""
    return models_dir.joinpath(*model.split("/"))


def staging_dir(models_dir: Path, model: str) -> Path:
    return models_dir / STAGING_DIRNAME / model.replace("/", "--")


# the Hub's repository names: letters, digits, '-', '_', '.'; not starting with '.' or '-'
HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def check_model_id(model: str) -> None:
    if not HUB_ID.fullmatch(model) or ".." in model:
        raise APIError(
            400,
            f"'{model}' is not a Hub model id; write it as org/name, e.g. "
            "Qwen/Qwen2.5-0.5B-Instruct.",
            param="model",
            code="invalid_model_id",
        )


def offline_error() -> APIError:
    return APIError(
        409,
        "This Tunery runs with HF_HUB_OFFLINE=1, so it does not reach the Hugging Face Hub. "
        "Unset HF_HUB_OFFLINE (or set it to 0) where the API and the workers run, or copy the "
        "model folder into TUNERY_MODELS_DIR yourself.",
        param="model",
        code="hub_offline",
    )


def _hub_error(exc: Exception, model: str, revision: str) -> APIError:
    if isinstance(exc, OfflineModeIsEnabled):
        return offline_error()
    if isinstance(exc, RevisionNotFoundError):
        return APIError(
            404,
            f"The Hub repository {model} has no revision '{revision}'; name a branch, tag or "
            "commit sha that it has.",
            param="revision",
            code="revision_not_found",
        )
    if isinstance(exc, GatedRepoError | RepositoryNotFoundError):
        return APIError(
            404,
            f"No model {model} on the Hub at {endpoint()}, or it is private or gated: check "
            "the id, or set HF_TOKEN (with access to it) where the API and the workers run.",
            param="model",
            code="model_not_found",
        )
    return APIError(
        502,
        f"The Hub at {endpoint()} did not answer for {model} ({type(exc).__name__}: {exc}); "
        "check HF_ENDPOINT and the network, and pull again.",
        param="model",
        code="hub_unreachable",
    )


def plan(models_dir: Path, model: str, revision: str = "main") -> Plan:
    """Resolve `revision` to its commit and decide what to fetch, or raise APIError."""
    check_model_id(model)
    if constants.is_offline_mode():
        raise offline_error()
    staging = staging_dir(models_dir, model)
    try:
        info = HfApi(endpoint=endpoint()).model_info(model, revision=revision, files_metadata=True)
        if info.sha is None:
            raise httpx2.HTTPError(f"the model info of {model} names no commit sha")
        sha = info.sha
        listing = [(s.rfilename, s.size or 0) for s in info.siblings or []]
        names = [name for name, _ in listing]
        check_listing(model, names)
        configs = [n for n in names if n in CODE_CONFIGS]
        if "config.json" not in configs:
            raise UnsafeModel(
                f"The Hub repository {model} has no config.json at its root, so it is not a "
                "transformers model; name a model repository."
            )
        staging.mkdir(parents=True, exist_ok=True)
        for name in configs:  # small, and what could name custom code: read before weights
            hf_hub_download(model, name, revision=sha, local_dir=staging, endpoint=endpoint())
        check_model_folder(staging)
    except UnsafeModel as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise APIError(400, str(exc), param="model", code="unsafe_model") from exc
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError) as exc:
        raise _hub_error(exc, model, revision) from exc
    except OSError as exc:  # the staging folder cannot be written
        raise APIError(
            409,
            f"Cannot write {model}'s files into TUNERY_MODELS_DIR ({models_dir}): {exc}. "
            "Pulls need it writable on the API and on workers that pull.",
            param="model",
            code="models_dir_not_writable",
        ) from exc
    loaded = json.loads((staging / "config.json").read_text())  # JSON: checked above
    config: dict[str, object] = loaded if isinstance(loaded, dict) else {}
    task = task_plugins.task_of_config(config)
    if task is None:
        shutil.rmtree(staging, ignore_errors=True)
        architectures = config.get("architectures")
        named = ", ".join(map(str, architectures)) if isinstance(architectures, list) else ""
        raise APIError(
            400,
            f"{model} is a {config.get('model_type', 'unknown')!s} model "
            f"({named or 'no architectures'}), which no "
            "Tunery task tunes; pull a text classifier base (BERT-like) or a causal LM "
            "(Llama-, Qwen-, GPT-2-like).",
            param="model",
            code="unsupported_model",
        )
    files = tuple(HubFile(name, size) for name, size in listing if allowed(name))
    found = Plan(model, revision, sha, files, task, str(config.get("model_type", "")))
    check_disk(models_dir, found)
    return found


def auto_pulled(models_dir: Path, model: str) -> bool:
    """Whether a job naming `model` pulls it first when TUNERY_HUB_AUTO_PULL is on: a Hub
    id (org/name) that is not in TUNERY_MODELS_DIR."""
    return (
        "/" in model
        and not model.startswith("ft:")
        and (resolve_base_model(models_dir, model) is None)
    )


def pending_base(models_dir: Path, found: Plan) -> BaseModel:
    """The base model a planned pull will put in place, for a job created before it lands."""
    return BaseModel(
        id=found.model,
        path=model_dir(models_dir, found.model),
        task=found.task,
        model_type=found.model_type,
        created_at=int(time.time()),
        sha=found.sha,
    )


def _on_disk(staging: Path, files: tuple[HubFile, ...]) -> tuple[int, int]:
    """(bytes, files) of a pull already in `staging`: finished files and partial downloads."""
    done_bytes = done_files = 0
    for f in files:
        path = staging / f.name
        if path.is_file() and path.stat().st_size == f.size:
            done_bytes += f.size
            done_files += 1
    partial = staging / ".cache" / "huggingface" / "download"
    if partial.is_dir():
        for path in partial.rglob("*.incomplete"):
            with contextlib.suppress(FileNotFoundError):  # moved into place meanwhile
                done_bytes += path.stat().st_size
    return done_bytes, done_files


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_disk(models_dir: Path, found: Plan) -> None:
    """Refuse a pull that would not fit, from the sizes in the Hub's listing."""
    models_dir.mkdir(parents=True, exist_ok=True)
    have, _ = _on_disk(staging_dir(models_dir, found.model), found.files)
    needed = found.total_bytes - have
    free = free_bytes(models_dir)
    if needed > free:
        raise APIError(
            507,
            f"{found.model} needs {needed} more bytes and TUNERY_MODELS_DIR ({models_dir}) has "
            f"{free} free; free some space (DELETE /v1/models/<id> removes a pulled base) or "
            "point TUNERY_MODELS_DIR at a larger disk.",
            param="model",
            code="insufficient_storage",
        )


def download(models_dir: Path, found: Plan, on_progress: Progress, every: float = 0.5) -> Path:
    """Fetch the plan's files, check them and move them into TUNERY_MODELS_DIR; the folder.

    `on_progress(bytes, files)` is called every `every` seconds from another thread and once
    at the end. Raises APIError (the Hub failed, a refused folder) or OSError (the disk).
    """
    target = model_dir(models_dir, found.model)
    if pulled_sha(target) == found.sha:  # pulled already, at this very commit
        on_progress(found.total_bytes, len(found.files))
        return target
    staging = staging_dir(models_dir, found.model)
    staging.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every):
            on_progress(*_on_disk(staging, found.files))

    reporter = threading.Thread(target=report, name=f"pull-{found.model}", daemon=True)
    reporter.start()
    try:
        snapshot_download(
            found.model,
            revision=found.sha,
            local_dir=staging,
            allow_patterns=[f.name for f in found.files],
            endpoint=endpoint(),
            max_workers=4,
        )
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError) as exc:
        raise _hub_error(exc, found.model, found.revision) from exc
    finally:
        stop.set()
        reporter.join()
    on_progress(*_on_disk(staging, found.files))
    try:
        check_model_folder(staging)
    except UnsafeModel as exc:
        raise APIError(400, str(exc), param="model", code="unsafe_model") from exc
    return _move_into_place(models_dir, found, staging)


def _move_into_place(models_dir: Path, found: Plan, staging: Path) -> Path:
    target = model_dir(models_dir, found.model)
    if not staging.is_dir() and pulled_sha(target) == found.sha:
        return target  # a concurrent pull of the same commit (a shared folder) moved it
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's resume notes
    (staging / MARKER).write_text(
        json.dumps({"model": found.model, "revision": found.revision, "sha": found.sha})
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():  # another revision: swapped out, then removed
        old = models_dir / STAGING_DIRNAME / f".old-{uuid.uuid4().hex}"
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove(models_dir: Path, model: str) -> None:
    """Remove a pulled model's folder and any staging left by a stopped pull."""
    shutil.rmtree(model_dir(models_dir, model), ignore_errors=True)
    shutil.rmtree(staging_dir(models_dir, model), ignore_errors=True)
    parent = model_dir(models_dir, model).parent
    if parent != models_dir and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()

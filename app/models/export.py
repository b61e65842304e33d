"""Export a fine-tuned model as a tar.gz of a directory that transformers/peft load."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from app.storage import ArtifactStore

# Only what a loader needs; a pickle can never be exported (we never write one either).
EXPORT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".md", ".jinja", ".tiktoken")


def tarball(store: ArtifactStore, artifact_key: str, top: str, scratch: Path) -> Path:
    source = store.local_dir(artifact_key)
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=scratch)
    os.close(fd)
    with tarfile.open(name, "w:gz", compresslevel=1) as tar:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name.endswith(EXPORT_SUFFIXES):
                tar.add(path, arcname=f"{top}/{path.relative_to(source).as_posix()}")
    return Path(name)

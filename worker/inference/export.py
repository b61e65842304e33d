"""Merged exports: an adapter folded into its base (merge_and_unload), stored once per model.

The control plane never imports torch, so it asks the inference server for this; the merged
directory lands in the artifact store beside the adapter and later downloads reuse it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from app.storage import ArtifactStore
from worker.inference.loading import (
    MANIFEST,
    ModelLoadError,
    ModelSpec,
    load_served,
    load_shared,
    plan,
)


def merged_key(artifact: str) -> str:
    return artifact.rsplit("/", 1)[0] + "/merged"


def export_merged(spec: ModelSpec, store: ArtifactStore) -> str:
    """Returns the store key of a full-model directory equivalent to spec's adapter."""
    if spec.artifact is None:
        raise ModelLoadError("a base model has nothing to merge; download the base itself")
    key = merged_key(spec.artifact)
    if store.exists(f"{key}/{MANIFEST}"):
        return key
    # fp32 on the CPU, on weights of its own: the export must not lose precision to the
    # serving dtype, nor touch the copy of the base that serves other adapters
    load = plan(spec, store)
    loaded = load_served(load, load_shared(load, torch.device("cpu"), torch.float32))
    model, tokenizer = loaded.shared.model, loaded.tokenizer
    manifest_path = store.local_dir(spec.artifact) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if loaded.adapter_name is not None:
        peft = loaded.shared.peft
        peft.set_adapter(loaded.adapter_name)
        model = peft.merge_and_unload()
    if loaded.labels is not None:
        # the merged config names the labels, so plain transformers loads say them too
        model.config.id2label = dict(enumerate(loaded.labels))
        model.config.label2id = {name: i for i, name in enumerate(loaded.labels)}
    with tempfile.TemporaryDirectory(prefix="tunery-merge-") as tmp:
        out = Path(tmp)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        store.delete(key)
        store.put_dir(out, key)
        # the manifest goes last: its presence means the directory is complete
        manifest.update(format="full", merged_from=spec.artifact)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        with (out / MANIFEST).open("rb") as fh:
            store.write_stream(f"{key}/{MANIFEST}", iter([fh.read()]))
    return key

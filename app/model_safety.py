"""Is a model folder safe to hand to transformers? Torch-free, so that the supervisor can
ask before it starts a trainer, and the trainer before it loads anything.

A model folder is data that users and operators bring. Two things in it would run code:
pickle weights (`pytorch_model.bin` & co: unpickling calls whatever the file names) and
custom modeling code (`*.py` next to the weights, named by an `auto_map`, which
transformers imports under `trust_remote_code`). Tunery loads safetensors only, never turns
trust_remote_code on, and refuses such folders outright with a message that says what to
change, rather than loading around what they carry. The inference server applies the same
rules through it (worker/inference/loading.py: check_safe), and a pull from the Hub applies
them to the repository's file listing before it downloads a byte (check_listing) and to the
pulled folder before it is moved into TUNERY_MODELS_DIR (app/hub/pull.py).
"""

from __future__ import annotations

import json
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# the JSON files through which transformers would import code from the folder
CODE_CONFIGS = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
)


class UnsafeModel(Exception):
    """The folder carries custom code or only pickle weights; the message says what to do."""


def check_model_folder(folder: Path) -> None:
    """Raise UnsafeModel when loading `folder` could run code it carries. A folder that is
    not there carries nothing: the loader reports it as missing."""
    if not folder.is_dir():
        return
    code = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    if code:
        raise UnsafeModel(
            f"The model folder {folder.name} carries custom code ({', '.join(code[:3])}); "
            "Tunery never runs a model's own code (trust_remote_code is off). Use a model "
            "with a built-in transformers architecture, without its .py files."
        )
    for name in CODE_CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise UnsafeModel(
                f"{name} of the model folder {folder.name} is not JSON: {exc}"
            ) from exc
        if isinstance(data, dict) and data.get("auto_map"):
            raise UnsafeModel(
                f"The {name} of the model folder {folder.name} has an auto_map, which names "
                "custom code; Tunery never runs a model's own code (trust_remote_code is "
                "off). Remove auto_map and use a built-in transformers architecture."
            )
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeModel(
            f"The model folder {folder.name} holds its weights only as pickle files "
            f"({', '.join(pickles[:3])}), which are never loaded: loading a pickle can run "
            "any code. Convert them to safetensors (from_pretrained, then "
            "save_pretrained(folder, safe_serialization=True)) on a machine you trust."
        )


def check_listing(model: str, names: list[str]) -> None:
    """The folder rules on a Hub repository's file listing (paths relative to its root),
    before anything is downloaded: its own code, or weights only as pickles, are refused."""
    code = sorted(n for n in names if n.endswith(".py"))
    if code:
        raise UnsafeModel(
            f"The Hub repository {model} carries custom code ({', '.join(code[:3])}); "
            "Tunery never runs a model's own code (trust_remote_code is off). Pull a model "
            "with a built-in transformers architecture."
        )
    if any(n.endswith(".safetensors") and "/" not in n for n in names):
        return
    pickles = sorted(n for n in names if "/" not in n and n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeModel(
            f"The Hub repository {model} holds its weights only as pickle files "
            f"({', '.join(pickles[:3])}), which are never loaded: loading a pickle can run "
            "any code. Pull a repository (or a revision) that has *.safetensors weights."
        )
    raise UnsafeModel(
        f"The Hub repository {model} has no *.safetensors weights at its root, so there is "
        "no model to pull; name a model repository (or a revision) that has them."
    )

"""One copy of a model's weights in memory, and the PEFT adapters attached to it.

Every adapter of a base runs on the same SharedModel: peft keeps each under its own adapter
name, a batch picks one with `set_adapter` or mixes several with `adapter_names` (peft's
mixed-adapter batches), and the bare base runs with the adapters disabled. Attaching,
detaching and running all mutate or read that one module, so they hold `lock`. Who runs
requests on it (a micro-batcher, a decode engine) is the inference service's business.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.inference.errors import ModelLoadError, short_error

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft's name for "no adapter" inside a mixed batch
BASE_ROW = "__base__"

_adapter_ids = itertools.count(1)


def model_memory_bytes(model: torch.nn.Module) -> int:
    # parameters() and buffers() skip shared tensors, so tied embeddings count once
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(eq=False)
class SharedModel:
    key: str
    task: str
    model: Any  # the transformers model; adapters are injected into it in place
    device: torch.device
    dtype: torch.dtype
    memory_bytes: int
    load_seconds: float
    # the PeftModel wrapping `model` while at least one adapter is attached
    peft: Any = None
    adapters: set[str] = field(default_factory=set)
    # whether peft can mix this model's adapters in one forward; None: not worked out yet
    _mixable: bool | None = field(default=None, repr=False)
    # torch modules are not safe to run from two threads at once, and on CPU one forward at a
    # time already uses every core
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def config(self) -> Any:
        return self.model.config

    def attach(self, adapter_dir: Path, display_name: str) -> tuple[str, int]:
        """Attach the adapter in adapter_dir; returns its adapter name and its own bytes.

        peft raises on a size mismatch, but only warns about missing keys and ignores
        unexpected ones; either would quietly serve the base model under the adapter's name.
        So the adapter's saved tensors are compared with what the wrapped model expects,
        name by name, and an adapter that does not fit is detached again before raising.
        """
        from peft import PeftConfig, get_peft_model, get_peft_model_state_dict

        name = f"adapter{next(_adapter_ids)}"
        with self.lock:
            try:
                config = PeftConfig.from_pretrained(str(adapter_dir))
                config.inference_mode = True
                if self.peft is None:
                    # injects the (still untrained) adapter; load_adapter fills in its weights
                    self.peft = get_peft_model(self.model, config, adapter_name=name)
                self.peft.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
                self.peft.eval()
            except Exception as exc:  # size mismatches, target modules absent, a bad config
                self._forget(name)
                raise ModelLoadError(
                    f"adapter {display_name!r} does not fit its base model: {short_error(exc)}"
                ) from exc
            expected = get_peft_model_state_dict(self.peft, adapter_name=name)
            problems = _mismatches(expected, adapter_dir / ADAPTER_WEIGHTS)
            if problems:
                self._forget(name)
                raise ModelLoadError(
                    f"adapter {display_name!r} does not match its base model: "
                    + "; ".join(problems)
                )
            self.adapters.add(name)
            self._mixable = None
            own = sum(t.numel() * t.element_size() for t in expected.values())
        return name, own

    def detach(self, name: str) -> None:
        with self.lock:
            self.adapters.discard(name)
            self._mixable = None
            self._forget(name)

    def _forget(self, name: str) -> None:
        if self.peft is None or name not in self.peft.peft_config:
            return
        if len(self.peft.peft_config) > 1:
            self.peft.delete_adapter(name)
            return
        # the last adapter: take peft out entirely, so the base runs as it was loaded
        self.model = _unwrap(self.peft)
        self.peft = None

    @property
    def mixes_adapters(self) -> bool:
        """Whether one forward can serve rows of different adapters (peft's mixed batches:
        LoRA adapters, heads saved as plain Linear/Embedding/Conv modules)."""
        with self.lock:
            if self._mixable is None:
                self._mixable = self._can_mix()
            return self._mixable

    def _can_mix(self) -> bool:
        if self.peft is None:
            return True
        from peft import PeftType
        from peft.utils.other import ModulesToSaveWrapper

        plain = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
        lora_only = all(
            c.peft_type == PeftType.LORA and not getattr(c, "use_dora", False)
            for c in self.peft.peft_config.values()
        )
        return lora_only and all(
            isinstance(m.original_module, plain)
            for m in self.peft.modules()
            if isinstance(m, ModulesToSaveWrapper)
        )

    @contextmanager
    def running(self, adapters: Sequence[str | None]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(module, extra forward kwargs) that run each row with its adapter (None: the
        bare base). Holds the lock; rows of different adapters need `mixes_adapters`."""
        with self.lock:
            unique = set(adapters)
            missing = {a for a in unique if a is not None and a not in self.adapters}
            if missing:
                raise ModelLoadError(
                    "the model was unloaded while the request waited for it; send it again"
                )
            if self.peft is None:
                yield self.model, {}
            elif unique == {None}:
                with self.peft.disable_adapter():
                    yield self.peft, {}
            elif len(unique) == 1:
                (only,) = unique
                # set_adapter walks every module (~3 ms on MiniLM): only when it changes
                if self.peft.active_adapter != only:
                    self.peft.set_adapter(only)
                yield self.peft, {}
            else:
                names = [a if a is not None else BASE_ROW for a in adapters]
                yield self.peft, {"adapter_names": names}


def _unwrap(peft_model: Any) -> Any:
    """The base module with every adapter layer removed and its original heads back.

    peft's unload() puts the active adapter's copy of each saved module (a classification
    head) in place of the original; the bare base must keep its own.
    """
    from peft.utils.other import ModulesToSaveWrapper

    inner = peft_model.base_model.model
    originals = {
        name: module.original_module
        for name, module in inner.named_modules()
        if isinstance(module, ModulesToSaveWrapper)
    }
    model = peft_model.unload()
    for name, original in originals.items():
        model.set_submodule(name, original)
    return model


def _mismatches(expected: dict[str, torch.Tensor], weights: Path) -> list[str]:
    from safetensors import safe_open

    wanted = {k: tuple(v.shape) for k, v in expected.items()}
    with safe_open(str(weights), framework="pt") as fh:
        saved = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    problems = []
    if missing := sorted(wanted.keys() - saved.keys()):
        problems.append(f"{len(missing)} tensors missing from the adapter, e.g. {missing[0]}")
    if unexpected := sorted(saved.keys() - wanted.keys()):
        problems.append(
            f"{len(unexpected)} adapter tensors match nothing in the base, e.g. {unexpected[0]}"
        )
    for key in sorted(wanted.keys() & saved.keys()):
        if wanted[key] != saved[key]:
            problems.append(
                f"{key} has shape {list(saved[key])}, the base needs {list(wanted[key])}"
            )
            break
    return problems

"""The evaluation child: `python -m worker.evaluation.run SPEC_JSON` (docs/serving.md).

Like training, evaluation runs in a child process of the Celery task: a crash or an out of
memory in torch cannot take the worker with it, the memory of the models is handed back
when it exits, and the worker process itself never imports torch. Spec:

    {"model": MODEL_SPEC, "compare_to": MODEL_SPEC | null,
     "file": {"path": "/abs/rows.jsonl", "filename": "rows.jsonl"},
     "storage_url": "...", "cache_dir": "/abs", "result_path": "/abs/result.json"}

MODEL_SPEC is the inference server's model spec (docs/internals.md). The child writes
`{"rows", "metrics", "compare_metrics", "difference"}` to result_path and exits 0, or
`{"error": {"code", "message", "param"}}` and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import task_plugins
from app.failures import Failure
from app.files.formats import DatasetError, read_examples
from app.storage import ArtifactStore
from worker.evaluation.scoring import difference, score
from worker.inference.loading import (
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    SharedModel,
    load_served,
    load_shared,
    plan,
)
from worker.inference.predictors import PredictionInputError
from worker.training.events import json_safe


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """Score spec's model (and compare_to) on the file's rows; raises Failure."""
    store = ArtifactStore(str(spec["storage_url"]), Path(spec["cache_dir"]))
    model_spec = ModelSpec(**spec["model"])
    compare_spec = ModelSpec(**spec["compare_to"]) if spec.get("compare_to") else None
    rows = _rows(spec["file"], model_spec.task)

    # Both models on one copy of the base when they share it (an adapter and its base)
    shared: dict[str, SharedModel] = {}

    def load(model: ModelSpec, param: str) -> LoadedModel:
        try:
            loading = plan(model, store)
            if loading.shared_key not in shared:
                shared[loading.shared_key] = load_shared(loading)
            return load_served(loading, shared[loading.shared_key])
        except ModelLoadError as exc:
            raise Failure("model_load_failed", str(exc), param) from exc

    tuned = load(model_spec, "model")
    other = load(compare_spec, "compare_to") if compare_spec is not None else None
    try:
        metrics = score(tuned, rows)
        compared = score(other, rows) if other is not None else None
    except PredictionInputError as exc:
        raise Failure("invalid_file", f"{spec['file']['filename']}: {exc}", "file") from exc
    return json_safe(
        {
            "rows": len(rows),
            "metrics": metrics,
            "compare_metrics": compared,
            "difference": difference(metrics, compared) if compared is not None else None,
        }
    )


def _rows(file: dict[str, str], task: str) -> list[dict[str, Any]]:
    filename = file["filename"]
    try:
        fmt, rows = read_examples(Path(file["path"]), filename)
    except DatasetError as exc:
        raise Failure("invalid_file", f"{filename}: {exc}", "file") from exc
    except OSError as exc:
        raise Failure("invalid_file", f"cannot read {filename}: {exc}", "file") from exc
    allowed = task_plugins.get(task).formats_for(task_plugins.SUPERVISED)
    if fmt not in allowed:
        raise Failure(
            "invalid_file",
            f"{filename} is in the {fmt} format; a {task} model is scored on "
            f"{' or '.join(sorted(allowed))} rows",
            "file",
        )
    return rows


def _write(path: Path, result: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m worker.evaluation.run SPEC_JSON", file=sys.stderr)
        return 2
    raw = argv[0]
    spec = json.loads(raw if raw.lstrip().startswith("{") else Path(raw).read_text())
    result_path = Path(spec["result_path"])
    try:
        _write(result_path, evaluate(spec))
        return 0
    except Failure as exc:
        error = exc.as_error()
    except Exception as exc:
        traceback.print_exc()
        error = {
            "code": "evaluation_error",
            "message": f"{type(exc).__name__}: {' '.join(str(exc).split())[:2000]}",
            "param": None,
        }
    _write(result_path, {"error": error})
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

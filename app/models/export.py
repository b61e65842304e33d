"""Export a fine-tuned model as a tar.gz of a directory that transformers/peft load.

The directory is the artifact as stored (an adapter: adapter_config.json and
adapter_model.safetensors, the layout peft and vLLM-style servers load; merged or full: a
transformers model directory) plus a model card, README.md, written at download time from
the job: base model, data files and their stats, hyperparameters, metrics.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import task_plugins
from app.models.registry import resolve_base_model
from app.storage import ArtifactStore
from app.tables import FileRow, FineTunedModelRow, JobRow

# Only what a loader needs; a pickle can never be exported (we never write one either).
EXPORT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".md", ".jinja", ".tiktoken")
README = "README.md"


def tarball(
    store: ArtifactStore, artifact_key: str, top: str, scratch: Path, readme: str | None = None
) -> Path:
    source = store.local_dir(artifact_key)
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=scratch)
    os.close(fd)
    with tarfile.open(name, "w:gz", compresslevel=1) as tar:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if readme is not None and rel == README:
                continue  # peft's generic card: ours says what this model is
            if path.is_file() and path.name.endswith(EXPORT_SUFFIXES):
                tar.add(path, arcname=f"{top}/{rel}")
        if readme is not None:
            data = readme.encode()
            info = tarfile.TarInfo(f"{top}/{README}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return Path(name)


def card_for(session: Session, tuned: FineTunedModelRow, form: str, models_dir: Path) -> str:
    """The model card of `tuned`, from its job and data files as they are now."""
    job = session.get(JobRow, tuned.job_id)
    files: list[tuple[str, FileRow | None]] = []
    if job is not None:
        for role, file_id in (
            ("training_file", job.training_file),
            ("validation_file", job.validation_file),
        ):
            if file_id is not None:
                files.append((role, session.get(FileRow, file_id)))
    base = resolve_base_model(models_dir, tuned.base_model)
    return model_card(tuned, job, files, form, str(base.path) if base is not None else None)


def model_card(
    tuned: FineTunedModelRow,
    job: JobRow | None,
    files: list[tuple[str, FileRow | None]],
    form: str,
    base_path: str | None,
) -> str:
    """README.md for an exported model. `form` is "adapter" or "merged"; `files` pairs each
    role (training_file, validation_file) with its row (None once deleted)."""
    adapter = form == "adapter"
    front = {
        "base_model": tuned.base_model,
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": task_plugins.get(tuned.task).export.pipeline_tag,
        "tags": ["tunery", tuned.training_type],
    }
    lines = ["---"]
    for key, value in front.items():
        lines.append(f"{key}: {json.dumps(value)}")
    lines += ["---", "", f"# {tuned.id}", ""]
    lines.append(
        f"Fine-tuned by Tunery job `{tuned.job_id}` from `{tuned.base_model}` "
        f"({tuned.task}, training type `{tuned.training_type}`). This download is the "
        + (
            "PEFT adapter: load it on top of the base model."
            if adapter
            else "full model (the adapter merged into its base where it had one)."
        )
    )
    lines += ["", "## Load it", "", "```python", *_loading_code(tuned, adapter, base_path), "```"]
    lines += ["", "## Data", ""]
    lines += _table(["role", "file", "filename", "format", "rows", "labels"], _file_rows(files))
    if job is not None:
        settings = {**(job.hyperparameters or {}), "seed": job.seed}
        training_type = {f"training_type.{k}": v for k, v in (job.training_type or {}).items()}
        lines += ["", "## Hyperparameters", ""]
        lines += _table(
            ["name", "value"], [[k, _cell(v)] for k, v in {**settings, **training_type}.items()]
        )
        metrics = job.final_metrics or {}
        lines += ["", f"## Metrics ({_exported(job)})", ""]
        scalars = [[k, _cell(v)] for k, v in metrics.items() if not isinstance(v, dict | list)]
        lines += _table(["metric", "value"], scalars) if scalars else ["No evaluation ran."]
        if isinstance(metrics.get("confusion_matrix"), list):
            lines += ["", "Confusion matrix (rows: true label, columns: predicted):", ""]
            lines += ["```", json.dumps(metrics["confusion_matrix"]), "```"]
        if job.trained_tokens:
            lines += ["", f"Trained on {job.trained_tokens} tokens."]
    lines += [
        "",
        "`tunery.json` holds the same facts for programs (task, labels, metrics, format).",
        "",
    ]
    return "\n".join(lines)


def _loading_code(tuned: FineTunedModelRow, adapter: bool, base_path: str | None) -> list[str]:
    export = task_plugins.get(tuned.task).export
    auto = export.auto_class
    base = base_path or tuned.base_model
    processor = export.processor_class
    code = [f"from transformers import {auto}, {processor}"]
    if adapter:
        code += [
            "from peft import PeftModel",
            "import json",
            "",
            "meta = json.load(open('tunery.json'))",
        ]
        if export.labels:
            code += [
                "labels = meta['labels']",
                f"base = {auto}.from_pretrained(",
                f"    {base!r}, num_labels=len(labels),",
                "    id2label=dict(enumerate(labels)),",
                "    label2id={l: i for i, l in enumerate(labels)}"
                # a base with a head of another size (an ImageNet ResNet) gets a new one
                + (", ignore_mismatched_sizes=True)" if processor != "AutoTokenizer" else ")"),
            ]
        else:
            code.append(f"base = {auto}.from_pretrained({base!r})")
        code.append("model = PeftModel.from_pretrained(base, '.')")
    else:
        code.append(f"model = {auto}.from_pretrained('.')")
    if processor == "AutoTokenizer":
        code.append("tokenizer = AutoTokenizer.from_pretrained('.')")
    else:
        code.append(f"processor = {processor}.from_pretrained('.')")
    return code


def _file_rows(files: list[tuple[str, FileRow | None]]) -> list[list[str]]:
    rows = []
    for role, file in files:
        if file is None:
            continue
        stats: dict[str, Any] = file.stats or {}
        labels = stats.get("labels")
        rows.append(
            [
                role,
                file.id,
                file.filename,
                str(file.format),
                str(stats.get("rows", "")),
                ", ".join(f"{k}: {v}" for k, v in labels.items())
                if isinstance(labels, dict)
                else "",
            ]
        )
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _exported(job: JobRow) -> str:
    """Which evaluation the metrics are: the exported checkpoint's, and why it was exported."""
    if job.result_reason == "final":
        return f"the final checkpoint, step {job.result_step}"
    if job.result_reason is not None:
        return f"the best evaluation, step {job.result_step} ({job.result_reason})"
    return f"the best evaluation, step {job.best_step}"

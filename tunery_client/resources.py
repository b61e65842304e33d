"""`tunery files|models|deployments ...` and `tunery predict`."""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tunery_client import output
from tunery_client.api import Client, ClientError
from tunery_client.jobspec import parse_pairs

# uploads bigger than this get a progress bar
PROGRESS_FROM_BYTES = 4 * 1024 * 1024

# -- files --------------------------------------------------------------------------------------


def upload(client: Client, args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        raise ClientError(f"{path} is not a file; give the path of a JSONL or CSV dataset.")
    total = path.stat().st_size
    progress = output.ByteProgress(
        f"uploading {path.name}", total, quiet=args.json or total < PROGRESS_FROM_BYTES
    )
    try:
        file = client.upload(path, args.purpose, progress.advance)
    finally:
        progress.close()
    if args.json:
        output.print_json(file)
    else:
        print_report(file)
    if file.get("status") == "error":
        return 1
    return 0


def print_report(file: dict[str, Any]) -> None:
    """The validation report: what was found, and every problem with its line number."""
    stats = file.get("stats") or {}
    print(f"{file['id']}  {file['filename']}  {output.size(file.get('bytes', 0))}")
    print(f"status   {output.status_text(file['status'])}")
    if file.get("format"):
        print(f"format   {file['format']}")
    if "rows" in stats:
        chars = f", up to {stats['max_chars']} characters a row" if stats.get("max_chars") else ""
        print(f"rows     {stats['rows']}{chars}")
    labels = stats.get("labels")
    if isinstance(labels, dict) and labels:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(labels.items(), key=lambda kv: -kv[1]))
        print(f"labels   {shown}")
    errors = file.get("errors") or []
    if errors:
        print(f"problems ({len(errors)} shown):")
        for error in errors:
            line = error.get("line")
            where = "file" if not line else f"line {line}"
            print(f"  {where}: {error.get('message')}")
    if file.get("status") == "error":
        print(f"The file cannot be used: {file.get('status_details')}", file=sys.stderr)
    elif file.get("status") == "processed":
        print(f"Train on it: tunery jobs create --model MODEL --training-file {file['id']}")


def list_files(client: Client, args: argparse.Namespace) -> int:
    page = client.get("/v1/files", limit=args.limit, after=args.after, purpose=args.purpose)
    if args.json:
        output.print_json(page)
        return 0
    rows = [
        [
            f["id"],
            f["filename"],
            output.status_text(f["status"]),
            f.get("format"),
            (f.get("stats") or {}).get("rows"),
            output.size(f.get("bytes", 0)),
            output.when(f.get("created_at")),
        ]
        for f in page["data"]
    ]
    if not rows:
        print("No files yet: upload one with `tunery files upload PATH`.")
        return 0
    output.table(["id", "filename", "status", "format", "rows", "size", "created"], rows)
    if page.get("has_more"):
        print(f"(more: --after {page['last_id']})")
    return 0


def get_file(client: Client, args: argparse.Namespace) -> int:
    file = client.get(f"/v1/files/{args.file_id}")
    if args.json:
        output.print_json(file)
    else:
        print_report(file)
    return 0


def delete_file(client: Client, args: argparse.Namespace) -> int:
    result = client.delete(f"/v1/files/{args.file_id}")
    if args.json:
        output.print_json(result)
    else:
        print(f"Deleted {args.file_id}.")
    return 0


# -- models -------------------------------------------------------------------------------------


def _model_path(model_id: str) -> str:
    # ids hold ':' and '/', which the API takes as they are in the path
    return "/v1/models/" + quote(model_id, safe="/:")


def list_models(client: Client, args: argparse.Namespace) -> int:
    page = client.get("/v1/models")
    if args.json:
        output.print_json(page)
        return 0
    rows = [
        [
            m["id"],
            m.get("kind"),
            m.get("task"),
            m.get("training_type"),
            output.when(m.get("created")),
        ]
        for m in page["data"]
    ]
    if not rows:
        print("No models: put base model folders in TUNERY_MODELS_DIR.")
        return 0
    output.table(["id", "kind", "task", "training type", "created"], rows)
    return 0


def get_model(client: Client, args: argparse.Namespace) -> int:
    model = client.get(_model_path(args.model_id))
    if args.json:
        output.print_json(model)
    else:
        width = max(len(k) for k in model)
        for key, value in model.items():
            print(f"{key.ljust(width)}  {output.cell(value)}")
    return 0


def delete_model(client: Client, args: argparse.Namespace) -> int:
    result = client.delete(_model_path(args.model_id))
    if args.json:
        output.print_json(result)
    else:
        print(f"Deleted {args.model_id}.")
    return 0


def download(client: Client, args: argparse.Namespace) -> int:
    target: Path = args.output
    target.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=target, prefix=".tunery-download-")
    archive = Path(name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            client.stream(f"{_model_path(args.model_id)}/content", format=args.format) as response,
        ):
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            progress = output.ByteProgress(f"downloading {args.format}", total, quiet=args.json)
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                progress.advance(len(chunk))
            progress.close()
        folder = _extract(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    if args.json:
        output.print_json({"model": args.model_id, "format": args.format, "path": str(folder)})
    else:
        files = sorted(p.name for p in folder.iterdir())
        print(f"{args.model_id} ({args.format}) is in {folder}: {', '.join(files)}")
    return 0


def _extract(archive: Path, target: Path) -> Path:
    with tarfile.open(archive, "r:gz") as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        if len(tops) != 1:
            raise ClientError(f"The download holds {len(tops)} top folders, expected one.")
        (top,) = tops
        folder = target / top
        if folder.exists():
            shutil.rmtree(folder)
        tar.extractall(target, filter="data")  # refuses absolute paths, '..' and links out
    return folder


# -- deployments --------------------------------------------------------------------------------


def create_deployment(client: Client, args: argparse.Namespace) -> int:
    dep = client.post("/v1/deployments", {"model": args.model})
    if args.wait:
        dep = wait_ready(client, dep, args.timeout, quiet=args.json)
    if args.json:
        output.print_json(dep)
    elif dep["status"] == "ready":
        print(f'{dep["id"]} is ready ({dep["model"]}). Try: tunery predict {dep["id"]} "some text"')
    else:
        print(f"{dep['id']} is {dep['status']}; `tunery deployments get {dep['id']}` tells when.")
    return 0


def wait_ready(client: Client, dep: dict[str, Any], timeout: float, quiet: bool) -> dict[str, Any]:
    line = None if quiet else output.StatusLine(every=5.0)
    started = time.monotonic()
    while dep["status"] == "loading":
        waited = time.monotonic() - started
        if waited > timeout:
            raise ClientError(
                f"{dep['id']} is still loading after {timeout:g}s; check the inference server, "
                "or wait longer with --timeout."
            )
        if line is not None:
            line.update(f"{dep['id']}  loading {dep['model']}  {output.duration(waited)}")
        time.sleep(0.5)
        dep = client.get(f"/v1/deployments/{dep['id']}")
    if line is not None:
        line.close()
    if dep["status"] == "failed":
        message = (dep.get("error") or {}).get("message", "no reason given")
        raise ClientError(f"{dep['id']} failed to load {dep['model']}: {message}")
    return dep


def list_deployments(client: Client, args: argparse.Namespace) -> int:
    page = client.get("/v1/deployments")
    if args.json:
        output.print_json(page)
        return 0
    rows = [
        [
            d["id"],
            output.status_text(d["status"]),
            d["model"],
            d.get("requests_served"),
            None if d.get("load_seconds") is None else f"{d['load_seconds']:.1f}s",
            None if not d.get("memory_bytes") else output.size(d["memory_bytes"]),
        ]
        for d in page["data"]
    ]
    if not rows:
        print("No deployments: create one with `tunery deployments create MODEL --wait`.")
        return 0
    output.table(["id", "status", "model", "requests", "load", "memory"], rows)
    return 0


def get_deployment(client: Client, args: argparse.Namespace) -> int:
    dep = client.get(f"/v1/deployments/{args.deployment_id}")
    if args.json:
        output.print_json(dep)
    else:
        width = max(len(k) for k in dep)
        for key, value in dep.items():
            print(f"{key.ljust(width)}  {output.cell(value)}")
    return 0


def usage(client: Client, args: argparse.Namespace) -> int:
    served = client.get("/v1/usage")
    if args.json:
        output.print_json(served)
        return 0
    print(f"project            {served['project_id']}")
    print(f"requests served    {output.number(served['requests_served'])}")
    print(f"prompt tokens      {output.number(served['prompt_tokens'])}")
    print(f"completion tokens  {output.number(served['completion_tokens'])}")
    return 0


def delete_deployment(client: Client, args: argparse.Namespace) -> int:
    result = client.delete(f"/v1/deployments/{args.deployment_id}")
    if args.json:
        output.print_json(result)
    else:
        print(f"Deleted {args.deployment_id}.")
    return 0


# -- predict ------------------------------------------------------------------------------------


def _deployment_id(client: Client, name: str) -> str | None:
    """A deployment id, given one or the name of a model a deployment serves (None: none)."""
    if name.startswith("dep-"):
        return name
    deployments = client.get("/v1/deployments")["data"]
    serving = [d for d in deployments if d["model"] == name]
    ready = [d for d in serving if d["status"] == "ready"]
    if ready:
        return str(ready[0]["id"])
    if serving:
        return str(serving[0]["id"])  # the API says why it cannot answer yet
    return None


def _media_inputs(args: argparse.Namespace) -> tuple[list[str], list[dict[str, str]]]:
    """(the paths, the {"image"|"audio": base64} items) of --image and --audio."""
    names: list[str] = []
    items: list[dict[str, str]] = []
    for kind in ("image", "audio"):
        for name in getattr(args, kind, None) or []:
            try:
                data = Path(name).read_bytes()
            except OSError as exc:
                raise ClientError(f"Cannot read --{kind} {name}: {exc.strerror or exc}") from exc
            names.append(name)
            items.append({kind: base64.b64encode(data).decode("ascii")})
    return names, items


def predict(client: Client, args: argparse.Namespace) -> int:
    texts = list(args.text)
    names, media = _media_inputs(args)
    if media and texts:
        raise ClientError("Give text inputs or --image/--audio files, not both.")
    if not media and (texts == ["-"] or (not texts and not sys.stdin.isatty())):
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts and not media:
        raise ClientError(
            'Give the text to predict on: tunery predict DEPLOYMENT "text" ... '
            "(or --image FILE / --audio FILE for an image or audio model)"
        )
    parameters = parse_pairs(args.param, "--param")
    inputs: list[Any] = list(media) if media else list(texts)
    if media:
        texts = names
    body: dict[str, Any] = {"inputs": inputs, "parameters": parameters}
    dep_id = _deployment_id(client, args.deployment)
    if dep_id is not None:
        path = f"/v1/deployments/{dep_id}/predict"
    else:  # a model without a deployment: loaded just in time
        path, body["model"] = "/v1/predict", args.deployment
    try:
        result = client.request("POST", path, json=body, slow=httpx.Timeout(60.0, read=600.0))
    except ClientError as exc:
        if dep_id is None and exc.status in (404, 405) and "route" in exc.message:
            raise ClientError(
                f"No deployment named or serving {args.deployment!r}. Deploy it with "
                f"`tunery deployments create {args.deployment} --wait`, or give a deployment "
                "id (dep-...)."
            ) from exc
        raise
    if args.json:
        output.print_json(result)
        return 0
    predictions = result.get("predictions", [])
    for text, prediction in zip(texts, predictions, strict=False):
        if "label" in prediction:
            score = output.number(prediction.get("score"))
            print(f"{prediction['label']}\t{score}\t{text}")
        else:
            generated = str(prediction.get("text", ""))
            if len(texts) > 1:
                print(f"> {text}\n{generated}\n")
            else:
                print(generated)
    return 0

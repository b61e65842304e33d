"""The prepared GPU check (issue 20): one command that exercises every GPU path of Tunery
through its real code and writes a JSON report and a short text table.

    python bench/gpu_check.py [--out DIR] [--dry-run] [--only STEP,STEP] [--peak-tflops N]
    bash bench/gpu_check_device.sh [ARGS]    # on a lent device, with bench/gpu_check_wheels.sh

On a CUDA machine it runs in about 5 minutes (budget: 8) with no internet: it builds its own
models (a ~200M-parameter Llama-shaped decoder and a BERT-base-shaped encoder with random
weights for throughput, tiny ones for correctness) and its own data. `--dry-run` runs the
same wiring on CPU with tiny models and tiny step counts in under 2 minutes
(tests/bench/test_gpu_check.py runs it, so the script cannot rot between devices); what
needs CUDA or bitsandbytes is reported `skipped` with the reason, never faked.

Steps (each through the code a user's job takes, never a toy loop):

- environment: torch/CUDA/bf16, the supervisor's device probe (worker/supervisor/devices.py)
  and the API's nvidia-smi probe (app/observability.py GpuProbe).
- train_lora / train_full / train_qlora: `worker.training.run.train(spec, emit)` on the big
  decoder (causal-lm): tokens/s (the trainer's own non-padding tokens per second, logs after
  the first), peak GPU memory (torch.cuda.max_memory_allocated), MFU = tokens/s x training
  FLOPs per token / the device's peak bf16 FLOP/s. FLOPs per token: 2N forward + 2N backward
  through the activations + 2 x trainable parameters for the weight gradients, plus the
  attention matmuls (2 x 2 x layers x d_model x mean tokens per row, three times for forward
  and backward); N counts the non-embedding parameters and the LM head.
- packing: the same LoRA job with hyperparameters.packing true and false on variable-length
  rows: the tokens/s ratio, and the first step's loss equal within tolerance (same weights,
  same rows; padding-free batches must not change the loss).
- bf16_vs_fp32: one tiny job started twice by the supervisor's launcher
  (worker/training/launch.py), on the GPU (bf16 autocast) and with the GPU hidden (fp32): the
  logged losses and the final eval_loss agree within tolerance.
- ddp: a tiny classification job as 2 ranks (per-device batch b) vs 1 process (batch 2b),
  both through `launch`: equal losses. NCCL across GPUs where there are 2 or more; NCCL (2.5
  and later) refuses two ranks on one GPU ("Duplicate GPU detected", NVIDIA/nccl#418), so on
  one GPU the ranks run on gloo with the GPU hidden and the report says NCCL was not run.
- serve_*: one `tunery serve` (bench/stacks.py) with the models in its models dir:
  classification throughput on the inference server's /internal/predict (64 inputs a
  request, and 32 clients of one input: micro-batching), generation throughput (16 prompts in
  one request), 32 concurrent streams on the public /v1/chat/completions (continuous
  batching), adapter switching (two adapters of one base, alternated: outputs differ between
  adapters and repeat per adapter; latency alternating vs staying), and the walk upload ->
  job -> deploy -> predict, then a second job cancelled mid-training with nvidia-smi showing
  its memory freed, and the API's /metrics reporting the GPU.

Read the report: every step has status ok / failed / skipped, its seconds, its figures and
its checks (each a name, ok, and the values compared). The exit status is 0 when no step
failed. docs/operations.md says how to run it on a lent device and what to look at.

Reviewed against the current docs for the paths it exercises (November 2026):
- transformers 5.x TrainingArguments: `bf16` (autocast, fp32 master weights),
  `include_num_input_tokens_seen="non_padding"`, `activation_checkpointing`, `use_cpu`,
  `ddp_backend` (None picks nccl on CUDA; gloo is named for CPU ranks).
- transformers 5.x padding-free training (docs: padding_free): DataCollatorWithFlattening,
  no attention_mask. The docs now prefer `return_flash_attn_kwargs=True` (boundaries
  precomputed) to inferring them from position_ids at runtime, which Tunery does
  (worker/training/packing.py, with use_cache=False) and then verifies on the model itself;
  the image has no flash-attn, so the GPU runs SDPA, and the packing step checks that the
  trainer still packs there and that the loss is unchanged.
- transformers Trainer.compute_loss: a model whose forward takes **kwargs is taken to sum
  its loss over num_items_in_batch, and under several ranks the loss is multiplied by the
  world size. True for causal LMs; false for sequence classification heads (a per-batch
  mean), which doubled the loss and gradient on 2 ranks: found by this script's ddp step in
  its dry run, fixed in task_plugins/text_classification/training.py.
  BitsAndBytesConfig(load_in_4bit, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant,
  bnb_4bit_compute_dtype=bfloat16) with device_map={"": local_rank}.
- peft: prepare_model_for_kbit_training before get_peft_model for QLoRA; LoraConfig with
  task_type; target modules from peft's per-architecture defaults.
- bitsandbytes: 4-bit NF4 needs a CUDA device; Params4bit report half the element count, so
  MFU counts parameters from the config, not from the loaded model.
- torch: torch.cuda.max_memory_allocated / reset_peak_memory_stats; NCCL needs one GPU per
  rank; is_bf16_supported.
- accelerate (under the Trainer): each rank takes cuda:LOCAL_RANK, and the batches of one
  process's sampler are dealt to the ranks in turn, so 2 ranks x b rows see the rows of one
  process x 2b rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REPORT_VERSION = 1
STATUSES = ("ok", "failed", "skipped")
# dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), by device name
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
# 1 GiB of slack when comparing nvidia-smi's used memory after a cancel with before the job
FREED_SLACK_BYTES = 1 << 30

# the vocabulary of the tests' tokenizer (tests/support/models.py CORPUS)
VOCABULARY = (
    "the movie was great and i loved it film terrible boring what a wonderful happy day this "
    "is awful sad bad question what is the capital of france answer paris translate to french "
    "cat chat hello world how are you today numbers 0 1 2 3 4 5 6 7 8 9 10 user assistant system"
)


# --- the report ------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Step:
    name: str
    status: str = "ok"
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        if not ok and self.status == "ok":
            self.status = "failed"
        return bool(ok)

    def skip(self, reason: str) -> None:
        self.status = "skipped"
        self.notes.append(reason)


class Skip(Exception):
    """A step (or the rest of it) cannot run here; the message says why."""


def validate_report(report: dict[str, Any]) -> list[str]:
    """What is wrong with a report's shape (empty when nothing): the test and the real run
    both hold reports to it."""
    problems = []
    for key, kind in (
        ("version", int),
        ("mode", str),
        ("complete", bool),
        ("environment", dict),
        ("steps", list),
        ("summary", dict),
    ):
        if not isinstance(report.get(key), kind):
            problems.append(f"{key}: expected {kind.__name__}")
    if problems:
        return problems
    if report["mode"] not in ("gpu", "dry-run"):
        problems.append(f"mode: {report['mode']!r} is not gpu or dry-run")
    counts = dict.fromkeys(STATUSES, 0)
    for i, step in enumerate(report["steps"]):
        where = f"steps[{i}] ({step.get('name')})"
        if step.get("status") not in STATUSES:
            problems.append(f"{where}: status {step.get('status')!r}")
            continue
        counts[step["status"]] += 1
        if not isinstance(step.get("seconds"), int | float) or step["seconds"] < 0:
            problems.append(f"{where}: seconds")
        if not isinstance(step.get("figures"), dict):
            problems.append(f"{where}: figures")
        for check in step.get("checks", []):
            if set(check) != {"name", "ok", "detail"} or not isinstance(check["ok"], bool):
                problems.append(f"{where}: check {check}")
        if step["status"] == "skipped" and not step.get("notes"):
            problems.append(f"{where}: skipped without a reason")
        if step["status"] == "failed" and not (
            step.get("error") or any(not c["ok"] for c in step.get("checks", []))
        ):
            problems.append(f"{where}: failed without an error or a failed check")
    if report["summary"] != counts:
        problems.append(f"summary {report['summary']} does not count the steps {counts}")
    return problems


def text_table(report: dict[str, Any]) -> str:
    """One line per step: status, seconds, the main figures, the first failure."""
    env = report["environment"]
    partial = "" if report["complete"] else " INCOMPLETE (stopped before the end)"
    lines = [
        f"tunery GPU check ({report['mode']}): {env.get('device_name') or 'cpu'}, torch "
        f"{env.get('torch')}, {report['summary']}{partial}",
        f"{'step':<22} {'status':<8} {'s':>6}  figures / failures",
    ]
    for step in report["steps"]:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in step["figures"].items() if k in HEADLINE)
        failed = [f"{c['name']}: {c['detail']}" for c in step["checks"] if not c["ok"]]
        if step.get("error"):
            failed.insert(0, step["error"].splitlines()[0])
        tail = "; ".join(
            ([shown] if shown else [])
            + ([f"FAILED {failed[0]}"] if failed else [])
            + ([f"({step['notes'][0]})"] if step["status"] == "skipped" else [])
        )
        lines.append(f"{step['name']:<22} {step['status']:<8} {step['seconds']:6.1f}  {tail}")
    return "\n".join(lines)


HEADLINE = {
    "tokens_per_second",
    "peak_memory_gib",
    "mfu",
    "tokens_per_second_ratio",
    "loss_relative_difference",
    "eval_loss_relative_difference",
    "backend",
    "inputs_per_second_batched",
    "inputs_per_second_32_clients",
    "tokens_per_second_batched",
    "stream_tokens_per_second",
    "stream_errors",
    "switch_latency_ratio",
    "job_seconds",
    "memory_freed",
}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# --- sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    # the throughput decoder: ~200M parameters on the GPU, tiny in the dry run
    llama: dict[str, int]
    bert: dict[str, int]
    train_rows: int
    batch_size: int
    max_seq_length: int
    logging_steps: int
    stream_clients: int
    stream_rounds: int
    new_tokens: int
    walk_steps: int
    # rows of the tiny jobs that compare two runs (bf16_vs_fp32, ddp): 4 and 2 steps when 16
    tiny_rows: int

    @classmethod
    def make(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(
                dry_run=True,
                llama=dict(
                    hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                ),
                bert=dict(
                    hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2,
                ),
                train_rows=12, batch_size=4, max_seq_length=64, logging_steps=1,
                stream_clients=32, stream_rounds=1, new_tokens=8, walk_steps=2,
                tiny_rows=16,
            )  # fmt: skip
        return cls(
            dry_run=False,
            llama=dict(
                hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                num_attention_heads=16, num_key_value_heads=8, vocab_size=32000,
            ),
            bert=dict(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12,
            ),
            train_rows=1280, batch_size=16, max_seq_length=1024, logging_steps=5,
            stream_clients=32, stream_rounds=4, new_tokens=64, walk_steps=40,
            tiny_rows=32,
        )  # fmt: skip


# --- models and data -------------------------------------------------------------------------


def build_llama(target: Path, sizes: dict[str, Any], seed: int = 0) -> Path:
    """A Llama-shaped decoder with random weights and the tests' BPE tokenizer (its ids are a
    prefix of the model's vocabulary; the rest only costs what a real vocabulary costs)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.models import _train_tokenizer

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer("bpe")
    config = LlamaConfig(
        **{**sizes, "vocab_size": max(sizes["vocab_size"], len(tokenizer))},
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    target.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def build_bert(target: Path, sizes: dict[str, Any], seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from tests.support.models import _train_tokenizer

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer("wordpiece")
    # no dropout: the ddp step compares ranks with one process, whose dropout masks differ
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **sizes,
    )
    target.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def causal_rows(n: int, max_words: int, seed: int) -> list[dict[str, str]]:
    """Prompt/completion rows of widely varied length (what packing is for)."""
    rng = random.Random(seed)
    vocabulary = VOCABULARY.split(" ")
    rows = []
    for _ in range(n):
        length = rng.randint(4, max(5, max_words))
        words = [rng.choice(vocabulary) for _ in range(length)]
        cut = max(1, length // 3)
        rows.append(
            {
                "prompt": "question: " + " ".join(words[:cut]) + " answer:",
                "completion": " " + " ".join(words[cut:]),
            }
        )
    return rows


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    from bench.train import make_rows

    return make_rows(n, seed)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def count_parameters(model_dir: Path) -> dict[str, int]:
    """Parameters from the config (meta tensors: nothing allocated, no 4-bit packing)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {
        "total": total,
        "non_embedding": total - embedding,
        "layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
    }


def training_flops_per_token(
    params: dict[str, int], trainable: int, mean_tokens_per_row: float
) -> float:
    """Training FLOPs per token (docstring at the top): matmuls forward (2N), backward through
    the activations (2N) and into the trainable weights (2 x trainable), plus attention."""
    n = params["non_embedding"]
    attention = 3 * 2 * 2 * params["layers"] * params["hidden_size"] * mean_tokens_per_row
    return 4 * n + 2 * min(trainable, params["total"]) + attention


def peak_flops(device_name: str | None, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for name, flops in PEAK_BF16_FLOPS.items():
        if device_name and name in device_name:
            return flops
    return None


# --- the environment -------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import torch

    from app.observability import GpuProbe
    from worker.supervisor.devices import cuda_device_count, trainer_processes

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device_count": torch.cuda.device_count() if cuda else 0,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "supervisor_cuda_devices": cuda_device_count(),
        "supervisor_trainer_processes": trainer_processes(),
        "nvidia_smi": GpuProbe().rows(),
        "cpus": os.cpu_count(),
    }
    for package in ("transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            module = __import__(package)
            env[package] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # a broken install is a figure, not the end of the check
            env[package] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    return env


def step_environment(step: Step, ctx: Context) -> None:
    env = ctx.env
    step.figures.update(
        device_count=env["device_count"],
        supervisor_cuda_devices=env["supervisor_cuda_devices"],
        nvidia_smi_gpus=len(env["nvidia_smi"]),
    )
    if ctx.plan.dry_run:
        step.notes.append("dry run: the probes ran; no GPU is expected")
        return
    step.check("cuda available", env["cuda_available"], f"torch.cuda {env['cuda_available']}")
    step.check(
        "the supervisor sees the GPUs",
        env["supervisor_cuda_devices"] == env["device_count"],
        f"devices.cuda_device_count() {env['supervisor_cuda_devices']}, torch "
        f"{env['device_count']}",
    )
    step.check(
        "nvidia-smi probe",
        len(env["nvidia_smi"]) == env["device_count"],
        f"GpuProbe rows {env['nvidia_smi']}",
    )
    step.check("bf16 supported", env["bf16"], f"is_bf16_supported {env['bf16']}")


# --- the trainer, in this process --------------------------------------------------------------


@dataclass
class Context:
    plan: Plan
    scratch: Path
    env: dict[str, Any]
    peak_tflops: float | None
    models: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    stack: Any = None

    @property
    def cuda(self) -> bool:
        return bool(self.env["cuda_available"])


@dataclass
class TrainResult:
    events: list[dict[str, Any]]
    wall_seconds: float
    peak_memory_bytes: int | None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    @property
    def losses(self) -> list[float]:
        return [float(e["train_loss"]) for e in self.of("log") if e["train_loss"] is not None]

    @property
    def eval_loss(self) -> float | None:
        done = self.of("succeeded")
        return float(done[0]["metrics"]["eval_loss"]) if done else None

    def steady_tokens_per_second(self) -> float | None:
        """The trainer's own tokens/s over its logs after the first (start-up excluded)."""
        rates = [e["tokens_per_second"] for e in self.of("log") if e.get("tokens_per_second")]
        rates = rates[1:] or rates
        return statistics.median(rates) if rates else None


def spec_for(
    ctx: Context,
    name: str,
    task: str,
    model: str,
    train: str,
    training_type: dict[str, Any],
    **hyperparameters: Any,
) -> dict[str, Any]:
    out = ctx.scratch / "runs" / name
    hp = {
        "n_epochs": 1,
        "batch_size": ctx.plan.batch_size,
        "learning_rate": 1e-4,
        "max_seq_length": ctx.plan.max_seq_length,
        "logging_steps": ctx.plan.logging_steps,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
    } | hyperparameters
    return {
        "job_id": f"gpu-check-{name}",
        "task": task,
        "base_model_dir": str(ctx.models[model]),
        "train_file": {"path": str(ctx.files[train])},
        "validation_file": {"path": str(ctx.files[f"{train}-validation"])},
        "output_dir": str(out),
        "events_path": str(out / "events.jsonl"),
        "seed": 7,
        "hyperparameters": hp,
        "training_type": training_type,
    }


def train_here(spec: dict[str, Any]) -> TrainResult:
    """`train(spec, emit)` in this process, with its peak GPU memory."""
    import torch

    from worker.training.run import train

    events: list[dict[str, Any]] = []
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        train(spec, events.append)
    finally:
        gc.collect()
    wall = time.perf_counter() - started
    peak = int(torch.cuda.max_memory_allocated()) if cuda else None
    if cuda:
        torch.cuda.empty_cache()
    return TrainResult(events, wall, peak)


def _throughput_step(step: Step, ctx: Context, training_type: dict[str, Any]) -> None:
    kind = training_type["type"]
    if kind == "qlora":
        if not ctx.cuda:
            raise Skip("QLoRA needs CUDA and bitsandbytes (the trainer refuses it without)")
        if str(ctx.env["bitsandbytes"]).startswith("unavailable"):
            raise Skip(f"bitsandbytes is not installed: {ctx.env['bitsandbytes']}")
    spec = spec_for(ctx, f"train-{kind}", "causal-lm", "llama", "causal", training_type)
    result = train_here(spec)
    done = result.of("succeeded")
    step.check("succeeded", bool(done), f"last event {result.events[-1]['type']}")
    started = result.of("started")[0]
    params = count_parameters(ctx.models["llama"])
    rows = started["n_train"]
    tokens = int(done[0]["trained_tokens"]) if done else 0
    rate = result.steady_tokens_per_second()
    flops = training_flops_per_token(params, started["trainable_parameters"], tokens / rows)
    peak = peak_flops(ctx.env["device_name"], ctx.peak_tflops)
    step.figures.update(
        parameters=params["total"],
        trainable_parameters=started["trainable_parameters"],
        steps=started["total_steps"],
        trained_tokens=tokens,
        tokens_per_second=rate,
        peak_memory_gib=result.peak_memory_bytes / 2**30 if result.peak_memory_bytes else None,
        flops_per_token=flops,
        mfu=rate * flops / peak if rate and peak and ctx.cuda else None,
        first_loss=result.losses[0] if result.losses else None,
        eval_loss=result.eval_loss,
        wall_seconds=result.wall_seconds,
    )
    if ctx.cuda and peak is None:
        step.notes.append("MFU: unknown device peak; pass --peak-tflops")
    step.check(
        "finite losses",
        bool(result.losses) and all(math.isfinite(x) for x in result.losses),
        f"{result.losses[:4]}",
    )
    step.check("tokens/s measured", bool(rate), f"{rate}")
    if ctx.cuda:
        step.check(
            "peak memory measured", bool(result.peak_memory_bytes), f"{result.peak_memory_bytes}"
        )


def step_train_lora(step: Step, ctx: Context) -> None:
    _throughput_step(step, ctx, {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0})


def step_train_full(step: Step, ctx: Context) -> None:
    _throughput_step(step, ctx, {"type": "full"})


def step_train_qlora(step: Step, ctx: Context) -> None:
    _throughput_step(step, ctx, {"type": "qlora", "r": 16, "alpha": 32, "dropout": 0.0})


def step_packing(step: Step, ctx: Context) -> None:
    lora = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0}
    runs = {}
    for packing in (True, False):
        spec = spec_for(ctx, f"packing-{packing}", "causal-lm", "llama", "causal", lora)
        spec["hyperparameters"] |= {"packing": packing, "logging_steps": 1}
        runs[packing] = train_here(spec)
    said = any(
        e.get("message") == "packing examples into padding-free batches"
        for e in runs[True].of("message")
    )
    step.check("the trainer packed", said, "its 'packing examples' message")
    on, off = runs[True], runs[False]
    step.check("both succeeded", bool(on.of("succeeded") and off.of("succeeded")), "")
    rate_on, rate_off = on.steady_tokens_per_second(), off.steady_tokens_per_second()
    difference = abs(on.losses[0] - off.losses[0]) / abs(off.losses[0])
    tolerance = 2e-2 if ctx.cuda else 1e-4
    step.figures.update(
        tokens_per_second_packed=rate_on,
        tokens_per_second_padded=rate_off,
        tokens_per_second_ratio=rate_on / rate_off if rate_on and rate_off else None,
        first_loss_packed=on.losses[0],
        first_loss_padded=off.losses[0],
        loss_relative_difference=difference,
        peak_memory_gib_packed=on.peak_memory_bytes / 2**30 if on.peak_memory_bytes else None,
        peak_memory_gib_padded=off.peak_memory_bytes / 2**30 if off.peak_memory_bytes else None,
    )
    step.check(
        "first-step loss packed == padded",
        difference <= tolerance,
        f"{on.losses[0]:.6f} vs {off.losses[0]:.6f} (relative {difference:.2e}, "
        f"tolerance {tolerance:g})",
    )


# --- the trainer as the supervisor starts it ----------------------------------------------------


@dataclass
class Launch:
    """One trainer to start through the supervisor's launcher: its spec, ranks and env."""

    spec: dict[str, Any]
    processes: int = 1
    env: dict[str, str] = field(default_factory=dict)


def launch_trainers(*launches: Launch, timeout: float = 420) -> list[TrainResult]:
    """The trainers through the supervisor's launcher (worker/training/launch.py), all at
    once (they are independent; most of a small one's time is its start-up)."""
    from app.settings import Settings
    from worker.training.launch import TrainerGroup, launch

    # warm starts as a worker's (TUNERY_WARM_START): on a GPU host this checks that a trainer
    # forked from the zygote uses CUDA
    settings = Settings()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    base_env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    groups: list[TrainerGroup] = []
    walls: dict[int, float] = {}
    try:
        for item in launches:
            out = Path(item.spec["output_dir"])
            out.mkdir(parents=True, exist_ok=True)
            spec_path = out / "spec.json"
            spec_path.write_text(json.dumps(item.spec))
            groups.append(launch(spec_path, item.processes, base_env | item.env, out, settings))
        deadline = time.monotonic() + timeout
        while len(walls) < len(groups):
            for i, group in enumerate(groups):
                if i not in walls and group.poll() is not None:
                    walls[i] = time.perf_counter() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"the trainers ran over {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        for group in groups:
            group.terminate()
    results = []
    for i, (item, group) in enumerate(zip(launches, groups, strict=True)):
        lines = Path(item.spec["events_path"]).read_text().splitlines()
        events = [json.loads(line) for line in lines]
        if group.returncode != 0:
            logs = "\n".join(log.read_text(errors="replace")[-1500:] for log in group.logs)
            raise RuntimeError(f"the trainer exited {group.returncode}: {events[-1:]}\n{logs}")
        results.append(TrainResult(events, walls[i], None))
    return results


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def step_bf16_vs_fp32(step: Step, ctx: Context) -> None:
    # packing off on both sides: this compares precision alone
    spec = spec_for(
        ctx, "precision-gpu", "causal-lm", "tiny-llama", "tiny-causal", {"type": "full"},
        batch_size=4, logging_steps=1, learning_rate=1e-3, packing=False, max_seq_length=64,
    )  # fmt: skip
    reference = dict(spec, output_dir=spec["output_dir"] + "-fp32")
    reference["events_path"] = reference["output_dir"] + "/events.jsonl"
    gpu, cpu = launch_trainers(Launch(spec), Launch(reference, env={"CUDA_VISIBLE_DEVICES": ""}))
    if not ctx.cuda:
        step.notes.append("dry run: both sides ran fp32 on CPU (the wiring, not bf16)")
    first = min(len(gpu.losses), len(cpu.losses), 4)
    pairs = zip(gpu.losses[:first], cpu.losses[:first], strict=True)
    worst = max(_relative(a, b) for a, b in pairs)
    assert gpu.eval_loss is not None and cpu.eval_loss is not None
    eval_difference = _relative(gpu.eval_loss, cpu.eval_loss)
    tolerance = 5e-2 if ctx.cuda else 1e-5
    step.figures.update(
        losses_bf16=gpu.losses[:first],
        losses_fp32=cpu.losses[:first],
        loss_relative_difference=worst,
        eval_loss_bf16=gpu.eval_loss,
        eval_loss_fp32=cpu.eval_loss,
        eval_loss_relative_difference=eval_difference,
    )
    step.check("losses agree", worst <= tolerance, f"worst relative {worst:.2e} <= {tolerance:g}")
    step.check(
        "eval_loss agrees",
        eval_difference <= tolerance,
        f"{gpu.eval_loss:.5f} vs {cpu.eval_loss:.5f} (relative {eval_difference:.2e})",
    )


def step_ddp(step: Step, ctx: Context) -> None:
    devices = int(ctx.env["device_count"])
    ranks = devices if devices >= 2 else 2
    env: dict[str, str] = {}
    if devices >= 2:
        step.figures["backend"] = "nccl"
    else:
        step.figures["backend"] = "gloo"
        env["CUDA_VISIBLE_DEVICES"] = ""
        if ctx.cuda:
            step.notes.append(
                "one GPU: NCCL refuses two ranks on one device (Duplicate GPU detected, "
                "NVIDIA/nccl#418), so the 2 ranks ran on gloo with the GPU hidden; NCCL not run"
            )
    per_rank = 4
    common = dict(logging_steps=1, learning_rate=1e-3, max_seq_length=64)
    distributed = spec_for(
        ctx, "ddp-ranks", "classification", "tiny-bert", "sentiment", {"type": "full"},
        batch_size=per_rank, **common,
    )  # fmt: skip
    single = spec_for(
        ctx, "ddp-single", "classification", "tiny-bert", "sentiment", {"type": "full"},
        batch_size=per_rank * ranks, **common,
    )  # fmt: skip
    many, one = launch_trainers(Launch(distributed, ranks, env), Launch(single, 1, env))
    steps = (many.of("started")[0]["total_steps"], one.of("started")[0]["total_steps"])
    step.check("same number of steps", steps[0] == steps[1], f"{steps}")
    first = min(len(many.losses), len(one.losses))
    pairs = zip(many.losses[:first], one.losses[:first], strict=True)
    worst = max(_relative(a, b) for a, b in pairs)
    assert many.eval_loss is not None and one.eval_loss is not None
    eval_difference = _relative(many.eval_loss, one.eval_loss)
    tolerance = 1e-2 if devices >= 2 else 1e-4
    step.figures.update(
        ranks=ranks,
        losses_ranks=many.losses,
        losses_single=one.losses,
        loss_relative_difference=worst,
        eval_loss_relative_difference=eval_difference,
    )
    step.check("losses agree", worst <= tolerance, f"worst relative {worst:.2e} <= {tolerance:g}")
    step.check(
        "eval_loss agrees",
        eval_difference <= tolerance,
        f"{many.eval_loss:.6f} vs {one.eval_loss:.6f} (relative {eval_difference:.2e})",
    )


# --- serving, through `tunery serve` -----------------------------------------------------------


def _stack(ctx: Context) -> Any:
    if ctx.stack is None:
        raise Skip("tunery serve did not start (see the serve_start step)")
    return ctx.stack


def step_serve_start(step: Step, ctx: Context, exits: ExitStack) -> None:
    from bench.stacks import stack

    models = ctx.scratch / "serve-models"
    models.mkdir()
    for name in ("llama", "tiny-llama", "tiny-bert"):
        (models / f"gpu-check-{name}").symlink_to(ctx.models[name])
    args = argparse.Namespace(database_url=None, broker_url=None)
    started = time.perf_counter()
    ctx.stack = exits.enter_context(stack("sqlite", ctx.scratch, models, args, 64, {}))
    step.figures["start_seconds"] = time.perf_counter() - started
    import httpx

    health = httpx.get(f"{ctx.stack.inference}/healthz", timeout=10).json()
    step.figures["inference_device"] = health["device"]
    expected = "cuda" if ctx.cuda else "cpu"
    step.check("inference server device", health["device"] == expected, f"{health}")


def _classifier_adapters(ctx: Context) -> list[dict[str, Any]]:
    """Two LoRA classifier adapters of one base in the serve stack's artifact store."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.worker.inference.artifacts import build_classification_adapter

    store = ctx.stack.data_dir / "artifacts"
    specs = []
    for i in range(2):
        key = f"models/ftjob-gpu-check-{i}/model"
        target = store / key
        if not target.exists():
            build_classification_adapter(ctx.models["tiny-bert"], target, ["neg", "pos"], seed=i)
            weights = target / "adapter_model.safetensors"
            tensors = load_file(weights)
            generator = torch.Generator().manual_seed(100 + i)
            for name, tensor in tensors.items():
                tensors[name] = torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
            save_file(tensors, weights, metadata={"format": "pt"})
        specs.append(
            {
                "key": f"ft:gpu-check-{i}",
                "task": "classification",
                "base_model_dir": str(ctx.models["tiny-bert"]),
                "artifact": key,
            }
        )
    return specs


def _texts(n: int, seed: int = 3) -> list[str]:
    return [row["text"] for row in sentiment_rows(n, seed)]


def burst(
    base: str, path: str, body: dict[str, Any], clients: int, rounds: int, stream: bool
) -> Any:
    """`clients` requests at once, each to its end, `rounds` times: every one must be
    answered (unlike a timed window, this holds however slow the machine is)."""
    import asyncio

    import aiohttp

    from bench.serving import Run, _one

    async def main() -> Run:
        run = Run(clients, 0.0)
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
            started = time.monotonic()
            for _ in range(rounds):
                calls = [_one(session, path, body, stream, run, False) for _ in range(clients)]
                await asyncio.gather(*calls)
            run.seconds = time.monotonic() - started
        return run

    return asyncio.run(main())


def step_serve_classification(step: Step, ctx: Context) -> None:
    import httpx

    running = _stack(ctx)
    spec = _classifier_adapters(ctx)[0]
    batch = {"model": spec, "inputs": _texts(64)}
    with httpx.Client(base_url=running.inference, timeout=120) as client:
        first = client.post("/internal/predict", json=batch)
        step.check("a 64-input predict", first.status_code == 200, first.text[:300])
        answers = first.json().get("predictions", [])
        step.check("64 answers", len(answers) == 64, f"{len(answers)}")
        # one request of 64 inputs after another: the batched forward's throughput
        requests = 1 if ctx.plan.dry_run else 20
        started = time.perf_counter()
        statuses = [
            client.post("/internal/predict", json=batch).status_code for _ in range(requests)
        ]
        batched_rate = requests * 64 / (time.perf_counter() - started)
    step.check("64-input predicts", set(statuses) == {200}, f"{statuses}")
    # 32 clients of one input each: what micro-batching makes of them
    single = {"model": spec, "inputs": _texts(1)}
    rounds = 1 if ctx.plan.dry_run else 20
    many = burst(running.inference, "/internal/predict", single, 32, rounds, stream=False)
    step.figures.update(
        inputs_per_second_batched=batched_rate,
        inputs_per_second_32_clients=many.rate,
        p99_ms_32_clients=many.p(0.99) * 1000,
        errors=len(many.errors) + len(many.refusals),
    )
    step.check("32 clients: no errors", not many.errors and not many.refusals, f"{many.errors[:1]}")
    step.check(
        "32 clients: all answered", len(many.latencies) == 32 * rounds, f"{len(many.latencies)}"
    )


def step_serve_generation(step: Step, ctx: Context) -> None:
    import httpx

    running = _stack(ctx)
    spec = {
        # not the API's key for this base ("gpu-check-llama"): one key, one spec
        "key": "gpu-check:llama-internal",
        "task": "causal-lm",
        "base_model_dir": str(ctx.models["llama"]),
    }
    parameters = {"max_new_tokens": ctx.plan.new_tokens, "temperature": 0}
    prompts = [row["prompt"] for row in causal_rows(16, 40, seed=5)]
    body = {"model": spec, "inputs": prompts, "parameters": parameters}
    with httpx.Client(base_url=running.inference, timeout=300) as client:
        client.post("/internal/predict", json={**body, "inputs": prompts[:1]})  # load, warm up
        started = time.perf_counter()
        response = client.post("/internal/predict", json=body)
        elapsed = time.perf_counter() - started
    step.check("16-prompt generate", response.status_code == 200, response.text[:300])
    predictions = response.json().get("predictions", [])
    generated = sum(int(p.get("completion_tokens") or 0) for p in predictions)
    step.figures["tokens_per_second_batched"] = generated / elapsed if generated else None
    step.check("tokens generated", generated > 0, f"{generated} in {elapsed:.2f} s")

    chat = {
        "model": "gpu-check-llama",
        "messages": [{"role": "user", "content": "question: what is the capital of france?"}],
        "max_tokens": ctx.plan.new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    clients = ctx.plan.stream_clients
    burst(running.api, "/v1/chat/completions", chat, 1, 1, stream=True)  # warm up
    run = burst(running.api, "/v1/chat/completions", chat, clients, ctx.plan.stream_rounds, True)
    step.figures.update(
        stream_clients=clients,
        stream_tokens_per_second=run.tokens_per_s,
        streams_completed=len(run.latencies),
        first_token_p50_ms=run.p(0.5, run.first_tokens) * 1000 if run.first_tokens else None,
        stream_errors=len(run.errors) + len(run.refusals),
    )
    step.check(
        f"{clients} concurrent streams, no errors",
        not run.errors and not run.refusals,
        f"{(run.errors + [str(r) for r in run.refusals])[:2]}",
    )
    expected = clients * ctx.plan.stream_rounds
    step.check("every stream completed", len(run.latencies) == expected, f"{len(run.latencies)}")


def step_serve_adapter_switching(step: Step, ctx: Context) -> None:
    import httpx

    running = _stack(ctx)
    specs = _classifier_adapters(ctx)
    texts = _texts(8, seed=11)
    rounds = 5 if ctx.plan.dry_run else 20

    def scores(client: httpx.Client, spec: dict[str, Any]) -> tuple[list[Any], float]:
        started = time.perf_counter()
        response = client.post("/internal/predict", json={"model": spec, "inputs": texts})
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"predict on {spec['key']}: {response.text[:300]}")
        return [p["scores"] for p in response.json()["predictions"]], elapsed

    with httpx.Client(base_url=running.inference, timeout=120) as client:
        first = [scores(client, spec)[0] for spec in specs]  # both loaded
        staying = [scores(client, specs[0])[1] for _ in range(rounds)]
        switching = []
        repeats = []
        for i in range(rounds):
            answer, elapsed = scores(client, specs[i % 2])
            switching.append(elapsed)
            repeats.append(answer == first[i % 2])
        loaded = client.get("/internal/models").json()
    step.check("adapters answer differently", first[0] != first[1], "scores of adapter 0 vs 1")
    step.check("each adapter answers the same again", all(repeats), f"{repeats}")
    keys = {spec["key"] for spec in specs}
    shared = [b for b in loaded.get("bases", []) if keys <= set(b["models"])]
    step.check("both adapters on one base", len(shared) == 1, f"{loaded.get('bases')}")
    # what the cache's memory budget counts (GPU bytes on a GPU)
    step.figures["base_memory_mib"] = shared[0]["memory_bytes"] / 2**20 if shared else None
    step.check(
        "the base's memory is reported",
        bool(shared and shared[0]["memory_bytes"] > 0),
        f"{loaded.get('bases')}",
    )
    ratio = statistics.median(switching) / statistics.median(staying)
    step.figures.update(
        staying_p50_ms=statistics.median(staying) * 1000,
        switching_p50_ms=statistics.median(switching) * 1000,
        switch_latency_ratio=ratio,
    )


def _gpu_used_bytes() -> int | None:
    from app.observability import GpuProbe

    rows = GpuProbe().rows()
    try:
        return sum(int(float(row[2]) * 2**20) for row in rows) if rows else None
    except ValueError:
        return None


def _job_body(ctx: Context, file_id: str, epochs: int, training_type: str) -> dict[str, Any]:
    return {
        "model": "gpu-check-llama",
        "training_file": file_id,
        "seed": 1,
        "training_type": {"type": training_type},
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": epochs,
                    "batch_size": ctx.plan.batch_size,
                    "learning_rate": 1e-4,
                    "max_seq_length": ctx.plan.max_seq_length,
                    "validation_split": 0.1,
                }
            },
        },
    }


def _wait(client: Any, path: str, until: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(path).json()
        if until(body):
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} still {body.get('status')} after {timeout:.0f} s: {body}")
        time.sleep(0.2)


def step_serve_walk(step: Step, ctx: Context) -> None:
    import httpx

    from bench.stacks import deploy

    running = _stack(ctx)
    over = {"succeeded", "failed", "cancelled"}
    with httpx.Client(base_url=running.api, timeout=120) as client:
        with ctx.files["walk"].open("rb") as fh:
            upload = client.post(
                "/v1/files", files={"file": ("walk.jsonl", fh)}, data={"purpose": "fine-tune"}
            )
        step.check("upload processed", upload.json().get("status") == "processed", upload.text)
        file_id = upload.json()["id"]
        started = time.perf_counter()
        created = client.post("/v1/fine_tuning/jobs", json=_job_body(ctx, file_id, 1, "lora"))
        if not step.check("job created", created.status_code == 200, created.text[:300]):
            return
        job_path = f"/v1/fine_tuning/jobs/{created.json()['id']}"
        job = _wait(client, job_path, lambda b: b["status"] in over, 240)
        step.figures["job_seconds"] = time.perf_counter() - started
        if not step.check("job succeeded", job["status"] == "succeeded", f"{job.get('error')}"):
            step.error = running.log_tail()[-3000:]
            return
        dep = deploy(running, job["fine_tuned_model"])
        answer = client.post(
            f"/v1/deployments/{dep}/predict",
            json={"inputs": ["question: hello answer:"], "parameters": {"max_new_tokens": 4}},
        )
        step.check("deployment predicts", answer.status_code == 200, answer.text[:300])

        before = _gpu_used_bytes()
        # many epochs: it must still be training when the cancel comes
        created = client.post("/v1/fine_tuning/jobs", json=_job_body(ctx, file_id, 50, "full"))
        job_path = f"/v1/fine_tuning/jobs/{created.json()['id']}"
        _wait(client, job_path, lambda b: bool((b.get("progress") or {}).get("step")), 240)
        during = _gpu_used_bytes()
        cancel = client.post(f"{job_path}/cancel")
        step.check("cancel accepted", cancel.status_code == 200, cancel.text[:300])
        cancelled = time.perf_counter()
        job = _wait(client, job_path, lambda b: b["status"] in over, 60)
        step.check("job cancelled", job["status"] == "cancelled", job["status"])
        after = _gpu_used_bytes()
        if before is not None and during is not None:
            deadline = time.monotonic() + 30
            while after is not None and after > before + FREED_SLACK_BYTES:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
                after = _gpu_used_bytes()
        metrics = client.get("/metrics").text
    if before is None or during is None or after is None:
        step.notes.append("nvidia-smi absent: the memory after the cancel was not read")
        step.figures["memory_freed"] = None
        return
    freed = after <= before + FREED_SLACK_BYTES
    step.figures.update(
        gpu_used_gib_before=before / 2**30,
        gpu_used_gib_training=during / 2**30,
        gpu_used_gib_after_cancel=after / 2**30,
        seconds_to_free=time.perf_counter() - cancelled,
        memory_freed=freed,
    )
    step.check("training held GPU memory", during > before, f"{before} -> {during}")
    step.check("memory freed after cancel", freed, f"{before} -> {during} -> {after} bytes")
    step.check(
        "/metrics reports the GPU",
        "tunery_gpu_memory_used_bytes" in metrics,
        "tunery_gpu_memory_used_bytes",
    )


# --- running it --------------------------------------------------------------------------------


def prepare(ctx: Context) -> None:
    """Models and data files, built once for every step."""
    plan = ctx.plan
    from tests.support.models import build_tiny_llama

    models = ctx.scratch / "models"
    ctx.models["llama"] = build_llama(models / "llama", plan.llama)
    ctx.models["tiny-llama"] = build_tiny_llama(models / "tiny-llama")
    ctx.models["tiny-bert"] = build_bert(models / "tiny-bert", plan.bert)
    data = ctx.scratch / "data"
    data.mkdir()
    # tokens run about 1.3 per word with the tests' tokenizer
    max_words = int(plan.max_seq_length / 1.5)
    rows = causal_rows(plan.train_rows, max_words, 1)
    ctx.files["causal"] = write_jsonl(data / "causal.jsonl", rows)
    ctx.files["causal-validation"] = write_jsonl(
        data / "causal-validation.jsonl", causal_rows(max(8, plan.train_rows // 20), max_words, 2)
    )
    ctx.files["tiny-causal"] = write_jsonl(
        data / "tiny-causal.jsonl", causal_rows(plan.tiny_rows, 30, 3)
    )
    ctx.files["tiny-causal-validation"] = write_jsonl(
        data / "tiny-causal-validation.jsonl", causal_rows(8, 30, 4)
    )
    ctx.files["sentiment"] = write_jsonl(
        data / "sentiment.jsonl", sentiment_rows(plan.tiny_rows, 5)
    )
    ctx.files["sentiment-validation"] = write_jsonl(
        data / "sentiment-validation.jsonl", sentiment_rows(8, 6)
    )
    walk_rows = max(12, plan.walk_steps * plan.batch_size)
    ctx.files["walk"] = write_jsonl(data / "walk.jsonl", causal_rows(walk_rows, max_words, 7))


StepFunction = Callable[[Step, Context], None]
STEPS: dict[str, StepFunction] = {
    "environment": step_environment,
    "train_lora": step_train_lora,
    "train_full": step_train_full,
    "train_qlora": step_train_qlora,
    "packing": step_packing,
    "bf16_vs_fp32": step_bf16_vs_fp32,
    "ddp": step_ddp,
    "serve_start": lambda step, ctx: None,  # run with the ExitStack, below
    "serve_classification": step_serve_classification,
    "serve_generation": step_serve_generation,
    "serve_adapter_switching": step_serve_adapter_switching,
    "serve_walk": step_serve_walk,
}


def run_step(name: str, ctx: Context, exits: ExitStack) -> Step:
    step = Step(name)
    started = time.perf_counter()
    try:
        if name == "serve_start":
            step_serve_start(step, ctx, exits)
        else:
            STEPS[name](step, ctx)
    except Skip as exc:
        step.skip(str(exc))
    except Exception as exc:  # one broken path must not hide the others
        step.status = "failed"
        step.error = "".join(traceback.format_exception(exc))[-4000:]
    step.seconds = time.perf_counter() - started
    print(f"[gpu-check] {name}: {step.status} in {step.seconds:.1f} s", flush=True)
    return step


def run(
    dry_run: bool, out: Path, only: list[str] | None = None, peak_tflops: float | None = None
) -> dict[str, Any]:
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a machine without one")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = Plan.make(dry_run)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []

    def write(complete: bool) -> dict[str, Any]:
        """The report so far: rewritten after every step, so a run stopped by a timeout
        still leaves what it measured (complete: false)."""
        summary = dict.fromkeys(STATUSES, 0)
        for step in steps:
            summary[step.status] += 1
        report = {
            "version": REPORT_VERSION,
            "mode": "dry-run" if dry_run else "gpu",
            "complete": complete,
            "started_at": started_at,
            "seconds": time.perf_counter() - started,
            "environment": ctx.env,
            "plan": asdict(plan),
            "steps": [asdict(step) for step in steps],
            "summary": summary,
        }
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "gpu_check.txt").write_text(text_table(report) + "\n")
        return report

    with tempfile.TemporaryDirectory(prefix="tunery-gpu-check-") as tmp, ExitStack() as exits:
        ctx = Context(plan, Path(tmp), environment(), peak_tflops)
        prepare(ctx)
        wanted = set(only or STEPS) | {"environment"}
        if any(n.startswith("serve_") for n in wanted):
            wanted.add("serve_start")  # the serving steps run on its stack
        for name in [n for n in STEPS if n in wanted]:
            steps.append(run_step(name, ctx, exits))
            write(complete=False)
        exits.close()
    report = write(complete=True)
    print(text_table(report), flush=True)
    return report


@contextmanager
def _quiet_logs() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, wiring only")
    parser.add_argument("--out", type=Path, default=Path("gpu-check-report"))
    parser.add_argument("--only", default=None, help=f"comma-separated, of: {', '.join(STEPS)}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = [s for s in only or [] if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    with _quiet_logs():
        report = run(args.dry_run, args.out, only, args.peak_tflops)
    problems = validate_report(json.loads((args.out / "gpu_check.json").read_text()))
    if problems:
        print(f"[gpu-check] the report is malformed: {problems}", file=sys.stderr)
        return 2
    return 1 if report["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

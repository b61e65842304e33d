"""One DPO job through Tunery vs the same job as a bare TRL `DPOTrainer` script.

    python bench/train.py --method dpo [--model DIR] [--rows 400] [--epochs 2]
                          [--batch-size 8] [--max-seq-length 64] [--threads N]

Both sides train the same causal LM (a tiny Llama built for the run unless --model names a
model dir) with LoRA (r=8, alpha=16, no dropout, peft's default targets) on the same
preference rows (TRL's prompt/chosen/rejected strings; a training and a validation file),
beta 0.1, sigmoid loss, the same hyperparameters and seed, each evaluating and checkpointing
every epoch. TRL computes the reference log-probabilities once before training
(`precompute_ref_log_probs=True`), as Tunery does. The service side's clock runs from the
job's creation until it reads `succeeded`; the bare side's from the process start to its
exit. It prints the wall-time ratio (goal <= 1.05) and both final eval_loss values (goal:
equal within 1e-3).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from train import ROOT, WALL_GOAL, BenchError, PeakMemory, run_job, tunery_serve, write_jsonl

LOSS_GOAL = 1e-3
TRAIN_SCRIPT = Path(__file__).with_name("train.py")
ANSWERS = ["paris", "rome", "madrid", "berlin", "lisbon", "vienna", "prague", "oslo"]
FILLER = ["please", "tell", "me", "quickly", "now", "the", "city", "answer"]


def make_preferences(n: int, seed: int) -> list[dict[str, str]]:
    """Questions of varied length whose preferred answer names the asked city."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        index = rng.randrange(len(ANSWERS))
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 12))]
        prompt = f"question {index}: {' '.join(words)} answer:"
        wrong = ANSWERS[(index + rng.randrange(1, len(ANSWERS))) % len(ANSWERS)]
        rows.append({"prompt": prompt, "chosen": f" {ANSWERS[index]}", "rejected": f" {wrong}"})
    return rows


def run_service(config: dict[str, Any], scratch: Path) -> dict[str, float]:
    data_dir = scratch / f"service-{time.time_ns()}"
    models_dir = data_dir / "models"
    models_dir.mkdir(parents=True)
    (models_dir / "bench-llama").symlink_to(Path(config["model_dir"]).resolve())
    with (
        tunery_serve(data_dir, models_dir, config.get("threads")) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        run = run_job(
            client,
            {"training_file": Path(config["train"]), "validation_file": Path(config["validation"])},
            {
                "model": "bench-llama",
                "seed": config["seed"],
                "training_type": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                "method": {
                    "type": "dpo",
                    "dpo": {
                        "hyperparameters": {
                            "beta": config["beta"],
                            "n_epochs": config["epochs"],
                            "batch_size": config["batch_size"],
                            "learning_rate": config["learning_rate"],
                            "max_seq_length": config["max_seq_length"],
                        }
                    },
                },
            },
        )
    metrics = run.metrics
    return {
        "wall": run.wall,
        "peak_rss": run.peak,
        "eval_loss": float(metrics["evaluations"][-1]["eval_loss"]),
        "train_loss": float(metrics["training"][-1]["train_loss"]),
        "reward_accuracy": float(metrics["evaluations"][-1]["reward_accuracy"]),
    }


def run_bare(config: dict[str, Any], scratch: Path) -> dict[str, float]:
    config_path = scratch / f"bare-dpo-{time.time_ns()}.json"
    result_path = config_path.with_suffix(".result.json")
    config_path.write_text(json.dumps({**config, "result": str(result_path)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if config.get("threads"):
        env["OMP_NUM_THREADS"] = str(config["threads"])
    started = time.perf_counter()
    with PeakMemory(str(config_path).encode()) as memory:
        completed = subprocess.run(
            [sys.executable, str(TRAIN_SCRIPT), "--bare-dpo", str(config_path)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise BenchError(f"the bare TRL script failed:\n{completed.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    return {"wall": wall, "peak_rss": memory.peak, **result}


def bare_main(config_path: str) -> int:
    """The baseline: TRL's DPOTrainer as its docs show it, on the same rows and settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    config = json.loads(Path(config_path).read_text())
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))

    def read(path: str) -> Dataset:
        lines = Path(path).read_text().splitlines()
        return Dataset.from_list([json.loads(line) for line in lines if line.strip()])

    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(Path(config_path).with_suffix(".out")),
        num_train_epochs=config["epochs"],
        per_device_train_batch_size=config["batch_size"],
        per_device_eval_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        lr_scheduler_type="linear",
        beta=config["beta"],
        loss_type=["sigmoid"],
        max_length=config["max_seq_length"],
        precompute_ref_log_probs=True,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        seed=config["seed"],
        data_seed=config["seed"],
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=None
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=read(config["train"]),
        eval_dataset=read(config["validation"]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    history = trainer.state.log_history
    evals = [entry for entry in history if "eval_loss" in entry]
    losses = [entry for entry in history if "loss" in entry]
    Path(config["result"]).write_text(
        json.dumps(
            {
                "eval_loss": float(evals[-1]["eval_loss"]),
                "train_loss": float(losses[-1]["loss"]),
                "reward_accuracy": float(evals[-1].get("eval_rewards/accuracies", float("nan"))),
            }
        )
    )
    return 0


def main(args: Any, scratch: Path) -> int:
    if args.model == "tiny-llama" or not Path(args.model).is_dir():
        sys.path.insert(0, str(ROOT))
        from tests.support.models import build_tiny_llama

        model_dir = str(build_tiny_llama(scratch / "tiny-llama"))
    else:
        model_dir = str(Path(args.model).resolve())
    rows = args.rows if args.rows != 2000 else 400
    config = {
        "model_dir": model_dir,
        "train": str(write_jsonl(scratch / "prefs.jsonl", make_preferences(rows, 1))),
        "validation": str(
            write_jsonl(scratch / "prefs-val.jsonl", make_preferences(max(16, rows // 10), 2))
        ),
        "rows": rows,
        "epochs": args.epochs,
        "batch_size": 8 if args.batch_size == 16 else args.batch_size,
        "max_seq_length": args.max_seq_length,
        "learning_rate": 5e-4 if args.learning_rate == 2e-3 else args.learning_rate,
        "beta": 0.1,
        "threads": args.threads,
        "seed": args.seed,
    }
    service = run_service(config, scratch)
    bare = run_bare(config, scratch)
    print(
        f"\nDPO job: {Path(model_dir).name}, LoRA r=8, {rows} preference pairs, "
        f"{config['epochs']} epochs, batch {config['batch_size']}, lr {config['learning_rate']}, "
        f"beta 0.1, max_seq_length {config['max_seq_length']}, threads {args.threads or 'default'}"
    )
    print(f"\n{'':>22}{'service':>14}{'bare TRL':>14}{'ratio':>10}")
    wall = service["wall"] / bare["wall"]
    print(f"{'wall time (s)':>22}{service['wall']:>14.2f}{bare['wall']:>14.2f}{wall:>9.3f}x")
    print(
        f"{'peak trainer RSS (MiB)':>22}{service['peak_rss'] / 2**20:>14.1f}"
        f"{bare['peak_rss'] / 2**20:>14.1f}"
    )
    for name in ("train_loss", "eval_loss", "reward_accuracy"):
        print(f"{'final ' + name:>22}{service[name]:>14.4f}{bare[name]:>14.4f}")
    difference = abs(service["eval_loss"] - bare["eval_loss"])
    print(
        f"\ngoal wall-time ratio <= {WALL_GOAL}: {'met' if wall <= WALL_GOAL else 'NOT met'} "
        f"({wall:.3f}x); goal final eval_loss within {LOSS_GOAL:g}: "
        f"{'met' if difference <= LOSS_GOAL else 'NOT met'} ({difference:.5f})"
    )
    return 0

"""An image (or audio) classification job through Tunery vs the same job as a bare
transformers Trainer script, in one run (bench/train.py's method, for the media tasks).

    python bench/train_media.py [--task image|audio] [--per-class 120] [--epochs 2]
                                [--batch-size 16] [--threads N] [--rounds 1]

Both sides train the same tiny model built here (a 4-layer ViT on 32x32 pictures, or a
2-layer Wav2Vec2 on 16 kHz clips; LoRA r=8 on query/value with the head trained whole) on
the same zip archives (scikit-learn's handwritten digits, 10 classes; or noisy tones, 3
classes), with the same hyperparameters and seed, augmentation off on both (the bare script
has no torchvision to augment with either):

- service: `tunery serve` (embedded) in a fresh data dir; once its worker and inference
  server are up, the zips are uploaded, then the clock runs from the job's creation until it
  reads `succeeded`;
- bare: a plain Trainer script that reads the pictures from the same zip with Pillow, runs
  the model's image processor in its collator, evaluates and saves every epoch and loads the
  best at the end; the clock runs from the process start to its exit.

It prints the wall-time ratio (service / bare; the goal is <= 1.05), examples per second,
peak trainer memory, and both final metrics (eval_loss, accuracy; the goal is equal within
1 point). Missing a goal is printed, not an error.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# bench/train.py: the serving and memory helpers
from train import (
    METRIC_GOAL,
    ROOT,
    WALL_GOAL,
    BenchError,
    PeakMemory,
    Side,
    run_job,
    tunery_serve,
)

LORA_TARGETS = ["query", "value", "q_proj", "v_proj"]


# -- data and model -------------------------------------------------------------------------


def digit_zips(scratch: Path, per_class: int) -> tuple[Path, Path]:
    """Train and validation zips of 32x32 RGB digits (`<label>/<n>.png`), split 85/15."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, validation = scratch / "digits-train.zip", scratch / "digits-validation.zip"
    with zipfile.ZipFile(train, "w") as t, zipfile.ZipFile(validation, "w") as v:
        for label in range(10):
            pictures = digits.images[digits.target == label][:per_class]
            cut = max(1, len(pictures) * 85 // 100)
            for index, pixels in enumerate(pictures):
                gray = (pixels / 16.0 * 255).astype(np.uint8)
                image = Image.fromarray(gray, mode="L").resize((32, 32)).convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                (t if index < cut else v).writestr(f"{label}/{index}.png", buffer.getvalue())
    return train, validation


def tone_zips(scratch: Path, per_class: int) -> tuple[Path, Path]:
    import numpy as np
    import soundfile

    rng = np.random.default_rng(0)
    rate, t = 16_000, np.arange(8_000) / 16_000
    train, validation = scratch / "tones-train.zip", scratch / "tones-validation.zip"
    with zipfile.ZipFile(train, "w") as tz, zipfile.ZipFile(validation, "w") as vz:
        for label, pitch in (("low", 220.0), ("mid", 660.0), ("high", 1760.0)):
            cut = max(1, per_class * 85 // 100)
            for index in range(per_class):
                wave = 0.5 * np.sin(2 * math.pi * pitch * (1 + 0.002 * index) * t)
                wave = wave + 0.3 * rng.standard_normal(t.size)
                buffer = io.BytesIO()
                soundfile.write(buffer, wave.astype(np.float32), rate, format="WAV")
                (tz if index < cut else vz).writestr(f"{label}/{index}.wav", buffer.getvalue())
    return train, validation


def build_model(task: str, target: Path) -> Path:
    import torch

    torch.manual_seed(0)
    target.mkdir(parents=True, exist_ok=True)
    if task == "image":
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        config = ViTConfig(
            image_size=32,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
        )
        ViTModel(config).save_pretrained(target)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(target)
    else:
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        config = Wav2Vec2Config(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            conv_dim=(32, 32, 32),
            conv_stride=(5, 4, 4),
            conv_kernel=(10, 8, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        )
        Wav2Vec2Model(config).save_pretrained(target)
        Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=True).save_pretrained(
            target
        )
    return target


# -- the service side -----------------------------------------------------------------------


def run_service(config: dict[str, Any], scratch: Path) -> Side:
    data_dir = scratch / f"service-{time.time_ns()}"
    models_dir = data_dir / "models"
    models_dir.mkdir(parents=True)
    (models_dir / "bench-model").symlink_to(Path(config["model_dir"]).resolve())
    with (
        tunery_serve(data_dir, models_dir, config.get("threads")) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        run = run_job(
            client,
            {"training_file": Path(config["train"]), "validation_file": Path(config["validation"])},
            {
                "model": "bench-model",
                "seed": config["seed"],
                "training_type": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": config["epochs"],
                            "batch_size": config["batch_size"],
                            "learning_rate": config["learning_rate"],
                            "augmentation": False,
                        }
                    },
                },
            },
        )
    final = run.metrics["final"]
    examples = config["n_train"] * config["epochs"]
    return Side(
        "service",
        run.wall,
        examples,
        run.peak,
        float(final["eval_loss"]),
        float(final["accuracy"]),
        run.first_step,
    )


# -- the bare side --------------------------------------------------------------------------


def run_bare(config: dict[str, Any], scratch: Path) -> Side:
    config_path = scratch / f"bare-{time.time_ns()}.json"
    result_path = config_path.with_suffix(".result.json")
    config_path.write_text(json.dumps({**config, "result": str(result_path)}))
    started_at = time.time()
    started = time.perf_counter()
    with PeakMemory(str(config_path).encode()) as memory:
        completed = subprocess.run(
            [sys.executable, __file__, "--bare", str(config_path)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise BenchError(f"the bare script failed:\n{completed.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    return Side(
        "bare",
        wall,
        config["n_train"] * config["epochs"],
        memory.peak,
        float(result["eval_loss"]),
        float(result["accuracy"]),
        float(result["first_step_at"]) - started_at,
    )


def bare_main(config_path: str) -> int:
    """The baseline: a transformers + peft image/audio classification script by hand."""
    import numpy as np
    import soundfile
    import soxr
    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import (
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    first_step_at: list[float] = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if not first_step_at:
                first_step_at.append(time.time())

    config = json.loads(Path(config_path).read_text())
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    image = config["task"] == "image"
    model_dir = config["model_dir"]

    def rows(path: str) -> list[tuple[str, str, str]]:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
        return [(path, name, name.split("/")[0]) for name in names]

    train, validation = rows(config["train"]), rows(config["validation"])
    names = {label for _, _, label in train}
    # the service's order (worker/training/data.py sort_labels): numeric when all are numbers
    labels = sorted(names, key=int) if all(n.isdigit() for n in names) else sorted(names)
    label_ids = {label: i for i, label in enumerate(labels)}
    processor = (AutoImageProcessor if image else AutoFeatureExtractor).from_pretrained(model_dir)
    archives: dict[str, zipfile.ZipFile] = {}

    def load(row: tuple[str, str, str]) -> Any:
        path, name, _ = row
        data = archives.setdefault(path, zipfile.ZipFile(path)).read(name)
        if image:
            return Image.open(io.BytesIO(data)).convert("RGB")
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
        return soxr.resample(mono, rate, 16_000) if rate != 16_000 else mono

    def collate(batch: list[tuple[str, str, str]]) -> dict[str, Any]:
        items = [load(row) for row in batch]
        if image:
            out = dict(processor(images=items, return_tensors="pt"))
        else:
            out = dict(
                processor(
                    items,
                    sampling_rate=16_000,
                    padding=True,
                    return_tensors="pt",
                    return_attention_mask=True,
                )
            )
        out["labels"] = torch.tensor([label_ids[row[2]] for row in batch])
        return out

    set_seed(config["seed"])
    auto = AutoModelForImageClassification if image else AutoModelForAudioClassification
    model = auto.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label_ids,
        dtype=torch.float32,
    )
    heads = ["classifier"] if image else ["classifier", "projector"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            modules_to_save=heads,
            exclude_modules=heads,
        ),
    )

    def accuracy(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(Path(config_path).with_suffix(".out")),
        num_train_epochs=config["epochs"],
        per_device_train_batch_size=config["batch_size"],
        per_device_eval_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=max(1, len(train) // config["batch_size"] // 10),
        seed=config["seed"],
        data_seed=config["seed"],
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,  # type: ignore[arg-type]
        eval_dataset=validation,  # type: ignore[arg-type]
        data_collator=collate,
        compute_metrics=accuracy,
        callbacks=[FirstStep()],
    )
    trainer.train()
    best = trainer.evaluate()
    trainer.save_model(str(Path(config_path).with_suffix(".model")))
    Path(config["result"]).write_text(
        json.dumps(
            {
                "first_step_at": first_step_at[0],
                "eval_loss": best["eval_loss"],
                "accuracy": best["eval_accuracy"],
            }
        )
    )
    return 0


# -- report ---------------------------------------------------------------------------------


def report(service: Side, bare: Side, config: dict[str, Any]) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}x" if b else "n/a"

    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    model = "ViT" if config["task"] == "image" else "Wav2Vec2"
    print(
        f"job: {config['task']} classification, tiny {model}, "
        f"LoRA r=8, {config['n_train']} training examples, {config['epochs']} epochs, "
        f"batch {config['batch_size']}, threads {config.get('threads') or 'default'}"
    )
    print(f"\n{'':>22}{'service':>14}{'bare':>14}{'ratio':>10}")
    print(
        f"{'wall time (s)':>22}{service.wall_seconds:>14.2f}{bare.wall_seconds:>14.2f}"
        f"{ratio(service.wall_seconds, bare.wall_seconds):>10}"
    )
    print(
        f"{'examples/s':>22}{service.tokens_per_second:>14.1f}{bare.tokens_per_second:>14.1f}"
        f"{ratio(service.tokens_per_second, bare.tokens_per_second):>10}"
    )
    print(
        f"{'peak trainer RSS (MiB)':>22}{service.peak_rss_bytes / 2**20:>14.1f}"
        f"{bare.peak_rss_bytes / 2**20:>14.1f}"
        f"{ratio(service.peak_rss_bytes, bare.peak_rss_bytes):>10}"
    )
    print(f"{'to the first step (s)':>22}{service.to_first_step:>14.2f}{bare.to_first_step:>14.2f}")
    print(f"{'final eval_loss':>22}{service.eval_loss:>14.4f}{bare.eval_loss:>14.4f}")
    print(f"{'final accuracy':>22}{service.accuracy:>14.4f}{bare.accuracy:>14.4f}")
    wall = service.wall_seconds / bare.wall_seconds
    same = abs(service.accuracy - bare.accuracy) <= METRIC_GOAL
    print(
        f"\ngoal wall-time ratio <= {WALL_GOAL}: {'met' if wall <= WALL_GOAL else 'NOT met'} "
        f"({wall:.3f}x); goal accuracy within 1 point: {'met' if same else 'NOT met'} "
        f"({abs(service.accuracy - bare.accuracy) * 100:.2f} points)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--task", choices=["image", "audio"], default="image")
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bare", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        return bare_main(args.bare)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-media-") as tmp:
        scratch = Path(tmp)
        make = digit_zips if args.task == "image" else tone_zips
        train, validation = make(scratch, args.per_class)
        with zipfile.ZipFile(train) as archive:
            n_train = sum(not n.endswith("/") for n in archive.namelist())
        config = {
            "task": args.task,
            "model_dir": str(build_model(args.task, scratch / "model")),
            "train": str(train),
            "validation": str(validation),
            "n_train": n_train,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "threads": args.threads,
            "seed": args.seed,
        }
        best: dict[str, Side] = {}
        try:
            for round_number in range(1, args.rounds + 1):
                for run in (run_service, run_bare):
                    side = run(config, scratch)
                    print(
                        f"round {round_number} {side.name}: {side.wall_seconds:.2f} s, "
                        f"accuracy {side.accuracy:.4f}",
                        flush=True,
                    )
                    if side.name not in best or side.wall_seconds < best[side.name].wall_seconds:
                        best[side.name] = side
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        report(best["service"], best["bare"], config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

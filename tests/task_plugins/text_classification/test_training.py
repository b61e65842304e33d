"""The classification task's encoding, without training."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from task_plugins.text_classification.training import encode_classification


def test_classification_truncation_keeps_special_tokens(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [
        {"text": "the movie was great and i loved it " * 3, "label": "p"},
        {"text": "bad", "label": "n"},
    ]
    encoded = encode_classification(rows, tokenizer, {"n": 0, "p": 1}, max_length=8)
    assert encoded.truncated == 1
    long, short = encoded.features
    assert len(long["input_ids"]) == 8 and long["labels"] == 1 and short["labels"] == 0
    assert long["input_ids"][-1] == tokenizer.sep_token_id
    assert {"input_ids", "attention_mask", "labels"} <= set(long)


def test_ranks_do_not_scale_the_per_batch_mean_loss(
    tmp_path: Path, tiny_bert: Path, tiny_llama: Path
) -> None:
    """The Trainer multiplies the loss by the world size for models that take loss kwargs
    (their loss is a sum over all ranks' items); the classification head's loss is a
    per-batch mean, so it must not be taken for one (2-rank DDP doubled it: bench/gpu_check.py
    ddp step). A causal LM's token-weighted loss keeps the kwargs."""
    from transformers import Trainer, TrainingArguments

    from worker.training.plugin import trainer_for

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    classifier = trainer_for("classification").load_model(tiny_bert, ["n", "p"], {})
    assert Trainer(model=classifier, args=args).model_accepts_loss_kwargs is False
    decoder = trainer_for("causal-lm").load_model(tiny_llama, [], {})
    assert Trainer(model=decoder, args=args).model_accepts_loss_kwargs is True

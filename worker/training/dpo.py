"""Direct Preference Optimization inside the shared training loop.

The loss is TRL's (trl 1.x `DPOTrainer`, loss types "sigmoid", "ipo" and an added "sft"
term), written against the Trainer that every Tunery job runs, so that callbacks,
checkpoints, resume, pause, cancel and multi-process launch stay the supervised ones
(docs/training.md, "Preference tuning (DPO)").

The reference model is the policy as training starts: the base under a fresh LoRA adapter
(whose B matrices are zero), the supervised model a job starts from, or the full weights.
Its log-probabilities of every chosen and rejected answer are computed once, before the
first step (TRL's `precompute_ref_log_probs`), so no second copy of the model is held in
memory and no reference forward runs per step. A resumed attempt computes them again from
the same starting weights, which gives the same values.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.jobs.spec import DpoMethod
from worker.training.callbacks import GuardedTrainer
from worker.training.features import Features
from worker.training.metrics import IGNORE_INDEX

# the two halves of every feature row, in the order batches stack them
SIDES = ("chosen", "rejected")
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")
# what a log and an evaluation report beside the loss
REWARD_STATS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")


class PreferenceCollator:
    """Chosen then rejected sequences of a batch, padded to one width: input_ids,
    attention_mask and labels of 2 x batch rows, and the reference log-probabilities."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[Features]) -> dict[str, torch.Tensor]:
        ids = [row[f"{side}_input_ids"] for side in SIDES for row in batch]
        labels = [row[f"{side}_labels"] for side in SIDES for row in batch]
        width = max(len(row) for row in ids)
        out = {
            "input_ids": torch.tensor(
                [row + [self.pad_token_id] * (width - len(row)) for row in ids]
            ),
            "attention_mask": torch.tensor(
                [[1] * len(row) + [0] * (width - len(row)) for row in ids]
            ),
            "labels": torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels]),
        }
        if all(key in batch[0] for key in REFERENCE_KEYS):
            out["reference_logps"] = torch.tensor(
                [row[key] for key in REFERENCE_KEYS for row in batch], dtype=torch.float64
            )
        return out


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens, their count) per row."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:].clone()
    mask = targets != IGNORE_INDEX
    targets[~mask] = 0
    per_token = torch.gather(logits.float().log_softmax(-1), 2, targets.unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1), mask.sum(-1)


def policy_logps(
    model: nn.Module, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's answer, its token count), one forward over the
    chosen and rejected rows together."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return sequence_logps(logits, inputs["labels"])


def dpo_loss(
    method: DpoMethod,
    logps: torch.Tensor,
    reference: torch.Tensor,
    counts: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a batch (chosen rows first, then rejected) and its reward statistics.

    With the log-ratios to the reference summed over each answer (c, r): sigmoid is
    -logsigmoid(beta * (c - r)); ipo is ((c / n_c - r / n_r) - 1 / (2 beta))^2 on per-token
    averages; sft_weight adds the negative log-likelihood per token of the chosen answers.
    The rewards are beta * c and beta * r, as TRL 1.x computes them (DPOTrainer._compute_loss).
    """
    half = logps.shape[0] // 2
    # the log-ratios to the reference, summed over each answer's tokens (TRL's "scores")
    ratios = logps - reference.to(logps.dtype)
    chosen, rejected = ratios[:half], ratios[half:]
    if method.loss_type == "ipo":
        per_token = ratios / counts.clamp(min=1)
        losses = ((per_token[:half] - per_token[half:]) - 1 / (2 * method.beta)) ** 2
    else:
        losses = -F.logsigmoid(method.beta * (chosen - rejected))
    loss = losses.mean()
    if method.sft_weight:
        nll = -logps[:half].sum() / counts[:half].sum().clamp(min=1)
        loss = loss + method.sft_weight * nll
    reward_chosen = method.beta * chosen.detach()
    reward_rejected = method.beta * rejected.detach()
    stats = {
        "reward_chosen": reward_chosen.mean(),
        "reward_rejected": reward_rejected.mean(),
        "reward_margin": (reward_chosen - reward_rejected).mean(),
        "reward_accuracy": (reward_chosen > reward_rejected).float().mean(),
    }
    return loss, stats


@torch.no_grad()
def add_reference_logps(
    model: nn.Module,
    features: list[Features],
    collator: Callable[[list[Features]], dict[str, torch.Tensor]],
    method: DpoMethod,
    batch_size: int,
    device: torch.device,
) -> None:
    """Write the starting model's log-probabilities of each row's answers into its features."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(features), batch_size):
            rows = features[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collator(rows).items()}
            logps, _ = policy_logps(model, batch)
            values = logps.double().cpu().tolist()
            for index, row in enumerate(rows):
                row["reference_chosen_logps"] = values[index]
                row["reference_rejected_logps"] = values[len(rows) + index]
    finally:
        model.train(was_training)


class DpoTrainer(GuardedTrainer):
    """The shared Trainer with DPO's loss; the reward statistics join each log (averaged
    over the steps since the last one) and each evaluation (over the validation rows)."""

    def __init__(self, *args: Any, method: DpoMethod, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.method = method
        # the loss is a mean per pair, not a sum over label tokens: the Trainer must scale
        # it for gradient accumulation itself
        self.model_accepts_loss_kwargs = False
        self._stats: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        logps, counts = policy_logps(model, inputs)
        loss, stats = dpo_loss(self.method, logps, inputs["reference_logps"], counts)
        bucket = self._stats["train" if model.training else "eval"]
        for name, value in stats.items():
            bucket[name].append(float(value))
        return (loss, {}) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self._stats["eval"].clear()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        means = self._means("eval")
        if output.metrics is not None:
            output.metrics.update({f"{prefix}_{k}": v for k, v in means.items()})
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs = {**logs, **self._means("train")}
        super().log(logs, start_time)

    def _means(self, kind: str) -> dict[str, float]:
        bucket = self._stats[kind]
        means = {name: sum(values) / len(values) for name, values in bucket.items() if values}
        bucket.clear()
        return means

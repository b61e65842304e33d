"""Causal LM training (the worker's half; imports torch): completions and chats tokenized
with the loss on what the model should learn, the decoder to load, padding-free batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from peft import TaskType
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from app.failures import Failure
from app.jobs.spec import TrainSpec
from task_plugins.base import DPO, Row
from task_plugins.causal_lm import TASK
from task_plugins.causal_lm.chat_render import check_tool_template, render_chat
from task_plugins.causal_lm.formats import CHAT
from task_plugins.causal_lm.metrics import argmax_logits, causal_lm_metrics
from task_plugins.causal_lm.preference import PREFERENCE
from task_plugins.text_classification import ENCODER_TYPES
from worker.training.dpo import PreferenceCollator
from worker.training.features import Encoded, PadCollator
from worker.training.metrics import IGNORE_INDEX
from worker.training.packing import packing_collator, packing_supported
from worker.training.plugin import (
    SAFE_LOAD,
    ComputeMetrics,
    Note,
    PreprocessLogits,
    TaskTrainer,
)

# Used when a causal LM's tokenizer has none; saved with the exported tokenizer so that
# inference renders chats exactly as training did.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class CausalLmTrainer(TaskTrainer):
    plugin = TASK
    peft_task_type = TaskType.CAUSAL_LM

    def check_base_model(self, config: PretrainedConfig, base_dir: Path) -> None:
        model_type = str(getattr(config, "model_type", ""))
        name = base_dir.name
        if getattr(config, "is_encoder_decoder", False):
            raise Failure(
                "invalid_base_model",
                f"{name} (model_type {model_type!r}) is an encoder-decoder model; causal-lm jobs "
                "need a decoder-only model such as Llama, Qwen or GPT-2",
                "model",
            )
        is_encoder = model_type in ENCODER_TYPES and not getattr(config, "is_decoder", False)
        if is_encoder or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise Failure(
                "invalid_base_model",
                f"{name} (model_type {model_type!r}) cannot generate text: it is not a decoder "
                "(causal language model). Train a classification job on it instead, or choose a "
                "decoder such as Llama, Qwen or GPT-2",
                "model",
            )

    def load_processor(self, base_dir: Path, formats: set[str], note: Note) -> Any:
        tokenizer = super().load_processor(base_dir, formats, note)
        prepare_chat_template(tokenizer, formats, note)
        return tokenizer

    def encode(
        self, spec: TrainSpec, rows: list[Row], processor: Any, labels: list[str], max_length: int
    ) -> Encoded:
        if spec.method.type == DPO:
            from task_plugins.causal_lm.preference_training import encode_preference

            return encode_preference(rows, processor, max_length)
        check_tool_template(processor, rows, spec.base_model_dir.name)
        return encode_causal(rows, processor, max_length, spec.hyperparameters.train_on_inputs)

    def load_model(
        self, weights_dir: Path, labels: list[str], extra: dict[str, Any]
    ) -> PreTrainedModel:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            weights_dir, dtype=torch.float32, **SAFE_LOAD, **extra
        )
        return model

    def collator(
        self,
        spec: TrainSpec,
        model: nn.Module,
        processor: Any,
        train_set: Encoded,
        cuda: bool,
        note: Note,
    ) -> Callable[[list[dict[str, Any]]], Any]:
        if spec.method.type == DPO:
            return PreferenceCollator(int(processor.pad_token_id))
        if _use_packing(spec, model, train_set, cuda, note):
            return packing_collator()
        return PadCollator(int(processor.pad_token_id))

    def metrics(
        self, labels: list[str], validation: Encoded | None = None
    ) -> tuple[ComputeMetrics, PreprocessLogits | None]:
        return causal_lm_metrics, argmax_logits


def _use_packing(
    spec: TrainSpec, model: nn.Module, train_set: Encoded, cuda: bool, note: Note
) -> bool:
    """Padding-free batches: asked for, or by default on a GPU; only where they are exact."""
    asked = spec.hyperparameters.packing
    if asked is False or (asked is None and not cuda):
        return False
    sample = [token for row in train_set.features[:4] for token in row["input_ids"]]
    # checked where the weights are now (a 4-bit model cannot move; the Trainer moves others)
    device = next(model.parameters()).device
    if packing_supported(model, sample, device):
        note("info", "packing examples into padding-free batches")
        return True
    if asked:
        note(
            "warning",
            "packing was asked for, but this model's attention does not keep packed examples "
            "apart; training on padded batches instead",
        )
    return False


def prepare_chat_template(
    tokenizer: PreTrainedTokenizerBase, formats: set[str], note: Note
) -> None:
    """A chat template for chat data, when the tokenizer has none."""
    if formats & {CHAT, PREFERENCE} and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        note(
            "info",
            "the tokenizer has no chat template; using a simple default, saved with the model",
        )


def encode_causal(
    rows: list[Row],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    train_on_inputs: bool = False,
) -> Encoded:
    """input_ids, attention_mask and labels (IGNORE_INDEX where no loss is taken).

    The loss is on completions / assistant turns (tool calls included) only, unless
    `train_on_inputs` puts it on every token (prompts, system, user and tool turns too).
    Assistant messages of weight 0 never have a loss.
    """
    encoded = Encoded([])
    for number, row in enumerate(rows, 1):
        if "messages" in row:
            try:
                input_ids, labels = _chat_tokens(
                    row["messages"], tokenizer, row.get("tools"), train_on_inputs
                )
            except TemplateError as exc:
                raise Failure(
                    "unsupported_chat_template",
                    f"the base model's chat template refuses chat {number} of {len(rows)} "
                    f"(after the split into training and validation rows): {exc}. Change the "
                    "row to what the template accepts, or choose another base model",
                    "training_file",
                ) from exc
        else:
            input_ids, labels = _prompt_completion_tokens(row, tokenizer)
            if train_on_inputs:
                labels = list(input_ids)
        if len(input_ids) > max_length:
            encoded.truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        # Position 0 never has a loss (nothing predicts it), so a row needs a label after it.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            encoded.dropped += 1
            continue
        encoded.features.append(
            {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
        )
    return encoded


def _prompt_completion_tokens(
    row: Row, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    # The prompt gets the tokenizer's special prefix (a BOS for Llama); the completion none.
    prompt = list(tokenizer(row["prompt"])["input_ids"])
    completion = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion.append(int(tokenizer.eos_token_id))
    return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion


def _chat_tokens(
    messages: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    tools: list[dict[str, Any]] | None = None,
    train_on_inputs: bool = False,
) -> tuple[list[int], list[int]]:
    """Tokens of the rendered chat, with labels only on the assistant messages' tokens
    (every token with `train_on_inputs`), never on those of weight-0 assistant messages."""

    def render(prefix: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return render_chat(tokenizer, prefix, tools, generation_prompt)

    text = render(messages)
    spans = assistant_spans(messages, text, render)
    trained = [(start, end) for start, end, weight in spans if weight]
    skipped = [(start, end) for start, end, weight in spans if not weight]

    def label(token: int, start: int, end: int) -> int:
        if _overlaps(start, end, skipped):
            return IGNORE_INDEX
        return token if train_on_inputs or _overlaps(start, end, trained) else IGNORE_INDEX

    # The template already writes any BOS/EOS it wants, so add none here.
    if tokenizer.is_fast:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        offsets = encoding["offset_mapping"]
        labels = [
            label(token, start, end) for token, (start, end) in zip(input_ids, offsets, strict=True)
        ]
        return input_ids, labels
    input_ids, labels = [], []
    cursor = 0
    for span_start, span_end, weight in [*spans, (len(text), len(text), 0)]:
        pieces = ((text[cursor:span_start], train_on_inputs), (text[span_start:span_end], weight))
        for piece, learned in pieces:
            ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []
            input_ids += ids
            labels += ids if learned else [IGNORE_INDEX] * len(ids)
        cursor = span_end
    return input_ids, labels


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < span_end and end > span_start for span_start, span_end in spans)


def assistant_spans(
    messages: list[dict[str, Any]], text: str, render: Callable[..., str]
) -> list[tuple[int, int, int]]:
    """Character spans of the assistant turns in `text` (the rendered chat), each with its
    weight (0 or 1).

    Rendering the chat up to each assistant turn tells where the turn starts (after the
    generation prompt, so the role header is not learned) and ends (including what the
    template writes after it, e.g. EOS, so the model learns to stop). Templates whose
    renders are not prefixes of each other fall back to finding the content itself.
    """
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = end = None
        through = _safe_render(render, messages[: index + 1], False)
        if through is not None and text.startswith(through):
            end = len(through)
            for generation_prompt in (True, False):
                before = _safe_render(render, messages[:index], generation_prompt)
                if before is not None and through.startswith(before) and cursor <= len(before):
                    start = len(before)
                    break
        if start is None or end is None:
            content = message.get("content") or ""
            found = text.find(content, cursor) if content else -1
            if found < 0:
                continue
            start, end = found, found + len(content)
        if end > start:
            spans.append((start, end, 0 if message.get("weight") == 0 else 1))
        cursor = end
    return spans


def _safe_render(
    render: Callable[..., str], prefix: list[dict[str, Any]], generation_prompt: bool
) -> str | None:
    if not prefix:
        return "" if not generation_prompt else None
    try:
        return render(prefix, generation_prompt)
    except Exception:
        # Some templates refuse partial chats (e.g. "must end with an assistant turn").
        return None


TRAINER = CausalLmTrainer()

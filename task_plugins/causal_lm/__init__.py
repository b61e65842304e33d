"""Causal LM: supervised fine-tuning of a decoder on completions or chats. Torch-free; the
worker's half is in `training` and `scoring`."""

from __future__ import annotations

import math
from typing import Any

from task_plugins.base import DPO, SUPERVISED, ExportInfo, MetricSpec, PredictorHook, TaskPlugin
from task_plugins.causal_lm.formats import (
    CHAT,
    CHAT_ROWS,
    PROMPT_COMPLETION,
    PROMPT_COMPLETION_ROWS,
)
from task_plugins.causal_lm.preference import (
    OPENAI_PREFERENCE_ROWS,
    PREFERENCE,
    TRL_PREFERENCE_ROWS,
)
from task_plugins.causal_lm.template_file import tool_support_problem

# config.json model_type values of decoders (they generate text).
DECODER_TYPES = frozenset({
    "llama", "gpt2", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
    "phi", "phi3", "gpt_neox", "gpt_neo", "gptj", "opt", "bloom", "falcon", "smollm3",
    "olmo", "olmo2", "stablelm", "starcoder2", "granite", "codegen",
})  # fmt: skip

_PREDICTORS = "worker.inference.predictors"


def perplexity(loss: float) -> float:
    # exp overflows a float past ~709; an infinite perplexity says the same thing.
    return math.exp(loss) if loss < 700 else math.inf


# What a DPO evaluation reports beside eval_loss (worker/training/dpo.py): the implicit
# rewards, beta times the policy's log-probability gain over the reference model's.
DPO_METRICS = ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected")


def _derive(fields: dict[str, Any]) -> dict[str, Any]:
    # a DPO loss is no next-token loss: no perplexity from it
    if fields.get("eval_loss") is None or "reward_margin" in fields:
        return {}
    return {"perplexity": perplexity(float(fields["eval_loss"]))}


TASK = TaskPlugin(
    name="causal-lm",
    formats={SUPERVISED: (PROMPT_COMPLETION, CHAT), DPO: (PREFERENCE,)},
    format_hint='rows {"prompt": ..., "completion": ...} or {"messages": [...]}',
    row_formats=(PROMPT_COMPLETION_ROWS, CHAT_ROWS, OPENAI_PREFERENCE_ROWS, TRL_PREFERENCE_ROWS),
    model_types=DECODER_TYPES,
    architecture_suffixes=("ForCausalLM", "LMHeadModel"),
    metrics=MetricSpec(
        selectable=("eval_loss", "perplexity", "token_accuracy"),
        lower_is_better=frozenset({"eval_loss", "perplexity"}),
        checkpoint={
            "perplexity": ("perplexity",),
            # OpenAI's checkpoint metrics call it so
            "token_accuracy": (
                "token_accuracy",
                "valid_mean_token_accuracy",
                "full_valid_mean_token_accuracy",
            ),
            "reward_accuracy": ("reward_accuracy",),
            "reward_margin": ("reward_margin",),
        },
        derive=_derive,
        method_selectable={DPO: ("eval_loss", "reward_accuracy", "reward_margin")},
    ),
    default_batch_size=8,
    base_learning_rates={"lora": 2e-4, "full": 2e-5, "freeze": 1e-4},
    # TRL's DPO examples: 5e-6 on a LoRA adapter's scale, 5e-7 for the whole model
    method_learning_rates={DPO: {"lora": 5e-5, "full": 5e-7, "freeze": 5e-6}},
    # the loss on prompts / system and user turns too, not only on completions
    hyperparameters={"train_on_inputs": False},
    trainer="task_plugins.causal_lm.training:TRAINER",
    scorer="task_plugins.causal_lm.scoring:score",
    predictor=PredictorHook(
        engine="decode",
        output=f"{_PREDICTORS}:Generation",
        parameters=frozenset(
            {
                *("max_new_tokens", "temperature", "top_p", "stop", "seed"),
                *("n", "logprobs", "top_logprobs", "response_format"),
            }
        ),
        inputs=frozenset({"text", "chat"}),
        streams=True,
    ),
    export=ExportInfo(auto_class="AutoModelForCausalLM", pipeline_tag="text-generation"),
    check_base=tool_support_problem,
)

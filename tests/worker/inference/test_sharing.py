"""Many adapters on one base: one copy of the base, each adapter's own answers, mixed batches."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from app.storage import ArtifactStore
from tests.worker.inference.artifacts import (
    CLS_ADAPTER,
    LABELS,
    LM_ADAPTER,
    build_classification_adapter,
    cls_spec,
    copy_artifact,
    lm_spec,
    variant_of,
)
from worker.inference.loading import LoadedModel, ModelLoadError, ModelSpec
from worker.inference.service import InferenceService

TEXTS = ["the movie was great and i loved it", "this is awful sad and bad", "hello"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}


def spec_of(body: dict[str, Any]) -> ModelSpec:
    return ModelSpec(**body)


def settle(service: InferenceService, loaded: LoadedModel) -> None:
    """Wait until the base's thread did what was queued before now (adapters detach there)."""
    done = threading.Event()
    assert service.engine_of(loaded).call(done.set)
    assert done.wait(30)


@pytest.fixture(scope="module")
def adapters(store: ArtifactStore) -> list[str]:
    """Ten classification adapters of the tiny BERT (the first is CLS_ADAPTER itself)."""
    keys = [CLS_ADAPTER]
    for i in range(1, 10):
        keys.append(variant_of(store, CLS_ADAPTER, f"models/ftjob-v{i}/model", seed=i))
    return keys


def scores(predictions: list[Any]) -> torch.Tensor:
    """Probabilities by label name, in name order (LABELS for the adapters)."""
    return torch.tensor([[p["scores"][k] for k in sorted(p["scores"])] for p in predictions])


def _name_order() -> list[int]:
    return sorted(range(len(LABELS)), key=lambda i: LABELS[i])


def plain_peft_scores(bert_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=len(LABELS))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with torch.inference_mode():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    return logits.softmax(-1)


def test_ten_adapters_serve_from_one_copy_of_the_base(
    store: ArtifactStore, bert_dir: Path, adapters: list[str]
) -> None:
    service = InferenceService(store, max_models=16)
    specs = [spec_of(cls_spec(bert_dir, key, key=f"ft:{i}")) for i, key in enumerate(adapters)]
    served = [scores(service.predict(spec, TEXTS, {})) for spec in specs]

    (base,) = service.cache.shared_stats()
    assert sorted(base["models"]) == sorted(s.key for s in specs)
    reports = {r.key: r for r in service.reports()}
    own = [reports[s.key].memory_bytes for s in specs]
    assert all(reports[s.key].base_memory_bytes == base["memory_bytes"] for s in specs)
    # about base + 10 adapters, not 10 bases
    assert service.cache.total_memory_bytes() == base["memory_bytes"] + sum(own)
    assert sum(own) < base["memory_bytes"]
    # every adapter answers as it would loaded alone in plain peft, not as its neighbours
    for key, got in zip(adapters, served, strict=True):
        expected = plain_peft_scores(bert_dir, store.local_dir(key))[:, _name_order()]
        torch.testing.assert_close(got, expected)
    assert not torch.allclose(served[0], served[1], atol=1e-3)


def test_concurrent_requests_for_different_adapters_batch_and_match(
    store: ArtifactStore, bert_dir: Path, adapters: list[str]
) -> None:
    service = InferenceService(store, max_models=16, max_batch_size=64, max_wait_ms=20)
    specs = [spec_of(cls_spec(bert_dir, key, key=f"ft:{i}")) for i, key in enumerate(adapters)]
    # the bare base has two labels: a base copy of its own, batched on its own
    specs.append(spec_of(cls_spec(bert_dir, None, key="base:bert")))
    alone = {s.key: scores(service.predict(s, TEXTS, {})) for s in specs}
    engine = service.engine_of(service.load(specs[0]))
    assert engine.stats().largest_batch == 1

    with ThreadPoolExecutor(max_workers=24) as pool:
        futures = [(s, pool.submit(service.predict, s, TEXTS, {})) for s in specs * 4]
        together = [(s, scores(f.result())) for s, f in futures]
    for spec, got in together:
        torch.testing.assert_close(got, alone[spec.key], atol=1e-5, rtol=1e-4)
    # the base's one batcher ran rows of several adapters in one forward
    assert engine.stats().largest_batch > 1
    assert service.load(specs[0]).shared.mixes_adapters


def test_the_bare_base_is_unchanged_by_adapters_coming_and_going(
    store: ArtifactStore, bert_dir: Path
) -> None:
    # two-label adapters: the same head shape as the bare base, so all share one copy
    keys = []
    for seed in (1, 2):
        key = f"models/ftjob-yesno-{seed}/model"
        directory = store.local_dir(key)
        if not (directory / "tunery.json").exists():
            build_classification_adapter(bert_dir, directory, labels=["no", "yes"], seed=seed)
        keys.append(key)
    service = InferenceService(store, max_models=16)
    base_spec = spec_of(cls_spec(bert_dir, None, key="base:bert"))
    before = scores(service.predict(base_spec, TEXTS, {}))
    tuned = [spec_of(cls_spec(bert_dir, key, key=f"ft:yn{i}")) for i, key in enumerate(keys)]
    tuned_scores = [scores(service.predict(spec, TEXTS, {})) for spec in tuned]
    (shared,) = service.cache.shared_stats()
    assert len(shared["models"]) == 3  # the bare base and both adapters
    with ThreadPoolExecutor(max_workers=6) as pool:  # base rows mixed with adapter rows
        mixed = [pool.submit(service.predict, s, TEXTS, {}) for s in [base_spec, *tuned] * 2]
        for future, expected in zip(mixed, [before, *tuned_scores] * 2, strict=True):
            torch.testing.assert_close(scores(future.result()), expected)
    for spec in tuned:
        assert service.unload(spec.key)
    loaded = service.load(base_spec)
    settle(service, loaded)
    base = loaded.shared
    assert base.peft is None and base.adapters == set()  # peft taken out again
    torch.testing.assert_close(scores(service.predict(base_spec, TEXTS, {})), before)
    assert not torch.allclose(tuned_scores[0], before, atol=1e-3)


def test_a_bad_adapter_leaves_the_shared_base_serving_the_others(
    store: ArtifactStore, bert_dir: Path, adapters: list[str]
) -> None:
    from safetensors.torch import load_file, save_file

    service = InferenceService(store, max_models=16)
    good = spec_of(cls_spec(bert_dir, adapters[0], key="ft:good"))
    expected = scores(service.predict(good, TEXTS, {}))
    broken_dir = copy_artifact(store, CLS_ADAPTER, "models/ftjob-broken/model")
    tensors = load_file(broken_dir / "adapter_model.safetensors")
    for name in list(tensors):
        if "lora_A" in name:
            tensors[name] = tensors[name][:2].contiguous()
    save_file(tensors, broken_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    bad = spec_of(cls_spec(bert_dir, "models/ftjob-broken/model", key="ft:bad"))
    with pytest.raises(ModelLoadError, match="does not fit its base model"):
        service.predict(bad, TEXTS, {})
    shared = service.load(good).shared
    assert list(shared.peft.peft_config) == [service.load(good).adapter_name]
    torch.testing.assert_close(scores(service.predict(good, TEXTS, {})), expected)


def test_eviction_detaches_the_adapter_and_frees_the_base_with_the_last(
    store: ArtifactStore, bert_dir: Path, adapters: list[str]
) -> None:
    service = InferenceService(store, max_models=2)
    specs = [spec_of(cls_spec(bert_dir, key, key=f"ft:{i}")) for i, key in enumerate(adapters[:3])]
    first = service.load(specs[0])
    name = first.adapter_name
    service.load(specs[1])
    service.load(specs[2])
    assert specs[0].key not in service.cache
    settle(service, service.load(specs[1]))
    assert name not in first.shared.peft.peft_config
    assert len(first.shared.peft.peft_config) == 2
    service.unload(specs[1].key)
    service.unload(specs[2].key)
    assert service.cache.shared_stats() == [] and service.cache.total_memory_bytes() == 0


def test_generation_mixes_adapters_in_one_batch(store: ArtifactStore, llama_dir: Path) -> None:
    variant = variant_of(store, LM_ADAPTER, "models/ftjob-lora-v2/model", seed=5)
    service = InferenceService(store, max_models=8, max_batch_size=32, max_wait_ms=50)
    specs = [
        spec_of(lm_spec(llama_dir, LM_ADAPTER, key="ft:lora")),
        spec_of(lm_spec(llama_dir, variant, key="ft:lora2")),
        spec_of(lm_spec(llama_dir, None, key="base:llama")),
    ]
    prompts = ["hello world", "question: what is the capital of france? answer:"]
    alone = {s.key: service.predict(s, prompts, GREEDY) for s in specs}
    assert alone["ft:lora"] != alone["base:llama"] and alone["ft:lora"] != alone["ft:lora2"]
    with ThreadPoolExecutor(max_workers=9) as pool:
        futures = [(s, pool.submit(service.predict, s, prompts, GREEDY)) for s in specs * 3]
        for spec, future in futures:
            assert future.result() == alone[spec.key]
    (base,) = service.cache.shared_stats()
    assert len(base["models"]) == 3
    assert service.engine_of(service.load(specs[0])).stats().largest_batch > 1


def test_equal_tokenizer_files_are_shared_only_within_one_model_type(
    store: ArtifactStore, llama_dir: Path, family_dirs: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    service = InferenceService(store, max_models=8)
    adapter, qwen = store.local_dir(LM_ADAPTER), family_dirs["qwen2"]
    # the Llama adapter and the Qwen2 model hold the same tokenizer files byte for byte ...
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (adapter / name).read_bytes() == (qwen / name).read_bytes()
    text = "numbers 0 1 2"
    # ... yet transformers reads them as another tokenizer under another model type
    llama_ids = AutoTokenizer.from_pretrained(llama_dir)(text)["input_ids"]
    qwen_ids = AutoTokenizer.from_pretrained(qwen)(text)["input_ids"]
    assert llama_ids != qwen_ids
    tuned = service.load(spec_of(lm_spec(llama_dir, LM_ADAPTER, key="ft:lora")))
    again = service.load(spec_of(lm_spec(llama_dir, LM_ADAPTER, key="ft:lora-again")))
    other = service.load(ModelSpec("base:qwen2", "causal-lm", str(qwen), None))
    assert tuned.shared_tokenizer is again.shared_tokenizer
    assert other.shared_tokenizer is not tuned.shared_tokenizer
    assert tuned.tokenizer(text)["input_ids"] == llama_ids
    assert other.tokenizer(text)["input_ids"] == qwen_ids

"""app/hub/pull.py against the local Hub: what is fetched, what is refused before any weight
moves, resuming, pinning, offline and the disk check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants

from app.failures import APIError
from app.hub import pull
from app.models.registry import resolve_base_model
from tests.app.hub.conftest import AUTO_MAP, BERT, CUSTOM_CODE, LLAMA, PICKLE_ONLY
from tests.support.hub_server import FakeHub, folder_files


def _pull(models: Path, model: str, revision: str = "main") -> tuple[Path, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    found = pull.plan(models, model, revision)
    folder = pull.download(models, found, lambda b, f: seen.append((b, f)), every=0.01)
    return folder, seen


def test_a_good_pull_lands_the_allow_listed_files_under_the_hub_id(
    hub: FakeHub, tmp_path: Path, tiny_models: Path
) -> None:
    hub.add(LLAMA, {**folder_files(tiny_models / "tiny-llama"), "README.md": b"card", "x/y": b""})
    found = pull.plan(tmp_path, LLAMA)
    assert found.sha == hub.repos[LLAMA].refs["main"]
    assert found.task == "causal-lm"
    names = {f.name for f in found.files}
    assert "model.safetensors" in names and "config.json" in names
    assert "README.md" not in names and "x/y" not in names
    # nothing visible to the registry until the pull is complete
    assert resolve_base_model(tmp_path, LLAMA) is None
    seen: list[tuple[int, int]] = []
    folder = pull.download(tmp_path, found, lambda b, f: seen.append((b, f)), every=0.01)
    assert folder == tmp_path / "tiny-org" / "tiny-llama"
    assert seen[-1] == (found.total_bytes, len(found.files))
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, pull.MARKER])
    original = tiny_models / "tiny-llama" / "model.safetensors"
    assert (folder / "model.safetensors").read_bytes() == original.read_bytes()
    assert pull.pulled_sha(folder) == found.sha
    base = resolve_base_model(tmp_path, LLAMA)
    assert base is not None and base.task == "causal-lm"
    assert not (tmp_path / pull.STAGING_DIRNAME / "tiny-org--tiny-llama").exists()


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (PICKLE_ONLY, "only as pickle files (pytorch_model.bin)"),
        (CUSTOM_CODE, "custom code (modeling_tiny.py)"),
        (AUTO_MAP, "auto_map"),
    ],
)
def test_unsafe_repositories_are_refused_before_any_weight_is_fetched(
    hub: FakeHub, tmp_path: Path, model: str, words: str
) -> None:
    with pytest.raises(APIError) as caught:
        pull.plan(tmp_path, model)
    assert caught.value.status == 400 and caught.value.code == "unsafe_model"
    assert words in caught.value.message
    fetched = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    assert not any(p.endswith((".safetensors", ".bin", ".py")) for p in fetched)
    assert not (tmp_path / "tiny-org").exists()


def test_an_interrupted_pull_resumes(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a connection cut in the middle of the weights: huggingface_hub asks for the rest (it
    # counts what it kept in chunks of 10 MB; the tiny weights need tiny chunks)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)
    hub.cut_after["model.safetensors"] = 1000
    folder, _ = _pull(tmp_path, LLAMA)
    first, second = hub.gets("model.safetensors")
    assert first is None and second is not None
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 1000
    assert (folder / "model.safetensors").stat().st_size > 1000
    # a pull that stops (the weights keep failing) keeps what it finished; the next one
    # downloads only the rest
    shutil.rmtree(folder)
    hub.requests.clear()
    hub.failing.add("model.safetensors")
    found = pull.plan(tmp_path, LLAMA)
    with pytest.raises(APIError) as caught:
        pull.download(tmp_path, found, lambda b, f: None)
    assert caught.value.code == "hub_unreachable"
    assert resolve_base_model(tmp_path, LLAMA) is None
    hub.failing.clear()
    hub.requests.clear()
    folder, seen = _pull(tmp_path, LLAMA)
    fetched = [p.rsplit("/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "resolve" in p]
    assert fetched == ["model.safetensors"]
    assert seen[-1][1] == len(found.files)


def test_a_revision_is_pinned_to_its_commit(
    hub: FakeHub, tmp_path: Path, tiny_models: Path
) -> None:
    files = folder_files(tiny_models / "tiny-llama")
    first = hub.repos[LLAMA].refs["main"]
    second = hub.add(LLAMA, {**files, "generation_config.json": b'{"do_sample": false}'})
    hub.repos[LLAMA].refs["v1"] = first
    assert first != second
    folder, _ = _pull(tmp_path, LLAMA, "v1")
    assert pull.pulled_sha(folder) == first
    assert (folder / "generation_config.json").read_bytes() == files["generation_config.json"]
    # the files come from the sha, never from a branch that may move meanwhile
    resolved = {
        p.split("/resolve/")[1].split("/")[0] for _, p, _ in hub.requests if "/resolve/" in p
    }
    assert resolved == {first}
    # pulling main replaces the folder with the newer commit
    folder, _ = _pull(tmp_path, LLAMA, "main")
    assert pull.pulled_sha(folder) == second
    assert (folder / "generation_config.json").read_bytes() == b'{"do_sample": false}'
    # and a commit sha is a revision too
    folder, _ = _pull(tmp_path, LLAMA, first)
    assert pull.pulled_sha(folder) == first


def test_unknown_models_and_revisions_say_what_to_change(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(APIError) as caught:
        pull.plan(tmp_path, "tiny-org/nothing")
    assert (caught.value.status, caught.value.param) == (404, "model")
    assert "HF_TOKEN" in caught.value.message
    with pytest.raises(APIError) as caught:
        pull.plan(tmp_path, BERT, "no-such-branch")
    assert (caught.value.status, caught.value.param) == (404, "revision")
    for bad in ("../etc", "a/b/c", ".hidden/x", ""):
        with pytest.raises(APIError) as caught:
            pull.plan(tmp_path, bad)
        assert caught.value.code == "invalid_model_id"


def test_offline_is_a_clear_error(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(APIError) as caught:
        pull.plan(tmp_path, LLAMA)
    assert (caught.value.status, caught.value.code) == (409, "hub_offline")
    assert "HF_HUB_OFFLINE" in caught.value.message
    assert hub.requests == []


def test_a_pull_that_would_not_fit_fails_before_it_starts(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pull, "free_bytes", lambda folder: 100)
    with pytest.raises(APIError) as caught:
        pull.plan(tmp_path, LLAMA)
    assert (caught.value.status, caught.value.code) == (507, "insufficient_storage")
    assert "100 free" in caught.value.message
    assert hub.gets("model.safetensors") == []


def test_a_model_no_task_tunes_is_refused_before_its_weights(
    hub: FakeHub, tmp_path: Path, tiny_models: Path
) -> None:
    files = folder_files(tiny_models / "tiny-llama")
    config = b'{"model_type": "fancy-unknown", "architectures": ["FancyThing"]}'
    hub.add("tiny-org/fancy", {**files, "config.json": config})
    with pytest.raises(APIError) as caught:
        pull.plan(tmp_path, "tiny-org/fancy")
    assert (caught.value.status, caught.value.code) == (400, "unsupported_model")
    assert "fancy-unknown" in caught.value.message and "FancyThing" in caught.value.message
    assert hub.gets("model.safetensors") == []
    assert not (tmp_path / pull.STAGING_DIRNAME / "tiny-org--fancy").exists()

"""load_model: every accepted spec form, and an actionable ModelLoadError for everything else."""

from __future__ import annotations

import contextlib
import importlib.resources
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from darkminer.models import DiffusionModel, ModelLoadError, load_model, loading

FORMS = ("StableDiffusionPipeline directory", ".safetensors", "owner/name", "shapesworld")


def test_load_pipeline_directory_round_trip(tiny_dir: Path, model: DiffusionModel, probe) -> None:
    loaded = load_model(tiny_dir)
    assert loaded.name == str(tiny_dir)
    assert isinstance(loaded.scheduler, DDPMScheduler)
    assert loaded.clip is not None and loaded.max_length == model.max_length
    for module in loaded.modules.values():
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    latents, timesteps, cond = probe
    torch.testing.assert_close(loaded.encode_prompt(["a red circle", "a photo of a cat"]), cond)
    torch.testing.assert_close(
        loaded.predict_noise(latents, timesteps, cond), model.predict_noise(latents, timesteps, cond)
    )
    torch.testing.assert_close(
        loaded.clip.get_text_features(input_ids=loaded.tokenize("a")).pooler_output,
        model.clip.get_text_features(input_ids=model.tokenize("a")).pooler_output,
    )


def test_load_with_dtype(tiny_dir: Path) -> None:
    loaded = load_model(str(tiny_dir), device="cpu", dtype=torch.bfloat16)
    assert loaded.dtype == loaded.text_encoder.dtype == loaded.clip.dtype == torch.bfloat16


def test_missing_component_is_named(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    for name in ("tokenizer", "text_encoder", "vae", "scheduler"):
        (tmp_path / name).mkdir()
    with pytest.raises(ModelLoadError, match=r"missing unet\. A pipeline directory .* model_index\.json"):
        load_model(tmp_path)


def test_unknown_spec_lists_accepted_forms() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("not a model")
    assert "not a model" in str(info.value)
    assert all(form in str(info.value) for form in FORMS)


@pytest.mark.parametrize("spec", ["./no/such/dir", "missing.safetensors", Path("no/such/dir")])
def test_nonexistent_path(spec: str | Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(spec)


def test_pickle_checkpoint_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(checkpoint)


def test_broken_single_file_wrapped(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="single-file checkpoint"):
        load_model(checkpoint)


def test_hub_failure_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unreachable:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise OSError("Couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(loading, "StableDiffusionPipeline", Unreachable)
    with pytest.raises(ModelLoadError, match=r"Hugging Face Hub.*unreachable.*local directory") as info:
        load_model("some-owner/some-model")
    assert isinstance(info.value.__cause__, OSError)


def test_shapesworld_not_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(ModelLoadError, match="darkminer toy train"):
        load_model("shapesworld")


def test_shapesworld_loads_packaged_directory(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> None:
    monkeypatch.setattr(loading, "_shapesworld_dir", lambda: contextlib.nullcontext(tiny_dir))
    assert load_model("shapesworld").name == "shapesworld"

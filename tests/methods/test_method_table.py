"""One table that runs every registered erasure method on the tiny random model."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from darkminer.config import load_config
from darkminer.methods import ErasureRequest, get_method, list_methods
from darkminer.models import disable_lora, load_model
from darkminer.models.adapters import apply_adapter
from darkminer.testing import TINY_METHOD_ALTERNATIVE as ALTERNATIVE
from darkminer.testing import TINY_METHOD_OVERRIDES as TINY_OVERRIDES
from darkminer.testing import tiny_model, tiny_model_dir

METHODS = [entry.name for entry in list_methods()]


def _goal_distance(name, model, run_dir):
    """How far the model is from what the method trains it towards, on fixed noisy latents."""
    star = _probe(model, "a star photo")
    with disable_lora(model.unet):
        anchor, circle, empty_original = (_probe(model, p) for p in ("a photo", "a circle photo", ""))
    if name == "dark_miner":  # Eq. 7: eps(x_t | c) -> eps'(x_t | c0), for the mined embeddings c
        _, checkpoint = sorted((int(p.name.split("-")[1]), p) for p in run_dir.glob("checkpoint-*"))[-1]
        mined = [v for k, v in load_file(checkpoint / "embeddings.safetensors").items() if k.endswith("embedding")]
        conds = [model.encode_prompt(token_embeds=c) for c in mined]
        return sum((_probe_cond(model, cond) - anchor).norm() for cond in conds)
    if name == "all_but_one":  # SPEC §4: guidance of the target -> guidance of the alternative
        return ((star - _probe(model, "")) - (circle - empty_original)).norm()
    raise AssertionError(f"no goal defined for {name}")


def test_every_registered_method_has_tiny_settings():
    assert set(METHODS) == set(TINY_OVERRIDES)


def _erase(name, model, out):
    entry = get_method(name)
    config = load_config(entry.config_class, None, TINY_OVERRIDES[name])
    request = ErasureRequest(["star"], ALTERNATIVE.get(name))
    return entry.method_class(config).erase(model, request, out)


def _probe_cond(model, cond):
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, *model.latent_shape, generator=generator)
    with torch.no_grad():
        return model.predict_noise(latents, torch.tensor([100, 600]), cond.expand(2, -1, -1))


def _probe(model, prompt):
    return _probe_cond(model, model.encode_prompt(prompt))


@pytest.mark.parametrize("name", METHODS)
def test_method_erases_and_saves(name, tmp_path):
    model = tiny_model(seed=0)
    result = _erase(name, model, tmp_path / "run")
    out = result.output_dir

    # The log holds finite losses only.
    for record in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()):
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            assert all(torch.isfinite(torch.tensor(v)) for v in values if isinstance(v, float))

    # The erased prompt's prediction moved towards the method's goal.
    with disable_lora(model.unet):
        before = _probe(model, "a star photo")
        goal_before = _goal_distance(name, model, out)
    after = _probe(model, "a star photo")
    assert (after - before).abs().max() > 0
    assert _goal_distance(name, model, out) < goal_before

    # Save -> load into a fresh model gives identical predictions.
    fresh = tiny_model(seed=0)
    record = apply_adapter(fresh, out)
    assert record["method"] == name and record["concepts"] == ["star"]
    torch.testing.assert_close(_probe(fresh, "a star photo"), after, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_adapter_loads_in_plain_diffusers(name, tmp_path):
    directory = tiny_model_dir(tmp_path / "sd", seed=0)
    model = load_model(directory)
    out = _erase(name, model, tmp_path / "run").output_dir
    pipe = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(out)
    cond = model.encode_prompt(["a star photo"] * 2)
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, *model.latent_shape, generator=generator)
    with torch.no_grad():
        ours = model.predict_noise(latents, torch.tensor([100, 600]), cond)
        theirs = pipe.unet(latents, torch.tensor([100, 600]), encoder_hidden_states=cond).sample
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert set(load_file(out / "pytorch_lora_weights.safetensors")) and all(
        k.startswith("unet.") for k in load_file(out / "pytorch_lora_weights.safetensors")
    )


@pytest.mark.parametrize("name", METHODS)
def test_rerun_with_other_config_is_refused(name, tmp_path):
    from darkminer.training.checkpoint import RunConflictError

    _erase(name, tiny_model(seed=0), tmp_path / "run")
    entry = get_method(name)
    config = load_config(entry.config_class, None, [*TINY_OVERRIDES[name], "seed=5"])
    with pytest.raises(RunConflictError, match="seed"):
        entry.method_class(config).erase(
            tiny_model(seed=0), ErasureRequest(["star"], ALTERNATIVE.get(name)), tmp_path / "run"
        )


@pytest.mark.parametrize("name", METHODS)
def test_rerun_of_finished_run_changes_nothing(name, tmp_path):
    out = _erase(name, tiny_model(seed=0), tmp_path / "run").output_dir
    first = load_file(out / "pytorch_lora_weights.safetensors")
    _erase(name, tiny_model(seed=0), tmp_path / "run")
    second = load_file(out / "pytorch_lora_weights.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key

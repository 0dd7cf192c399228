"""One table that runs every registered erasure method on the tiny random model."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from darkminer.config import load_config
from darkminer.methods import ErasureRequest, get_method, list_methods
from darkminer.methods.fmn import concept_mask, recording_concept_attention
from darkminer.models import disable_lora, load_model
from darkminer.models.adapters import apply_adapter
from darkminer.testing import TINY_METHOD_ALTERNATIVE as ALTERNATIVE
from darkminer.testing import TINY_METHOD_OVERRIDES as TINY_OVERRIDES
from darkminer.testing import tiny_model, tiny_model_dir

METHODS = [entry.name for entry in list_methods()]
NOT_LORA = {
    "sld": "SLD is inference-time guidance: it changes no weight and writes no LoRA (SPEC §2); "
    "test_inference_time_method_guides_and_saves checks it on generated images instead.",
}
"""Methods whose output is not a LoRA adapter, and why the LoRA-specific checks do not apply to them."""


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
    if name == "esd":  # eps(x_t, c) -> eps*(x_t, 0) - eta (eps*(x_t, c) - eps*(x_t, 0)), eta = 1, c = "star"
        with disable_lora(model.unet):
            star_original = _probe(model, "star")
        return (_probe(model, "star") - (2 * empty_original - star_original)).norm()
    if name == "ca":  # eps(x_t, c_target) -> sg eps(x_t, c_anchor), with the tiny pair ("star", "circle")
        return (_probe(model, "star") - _probe(model, "circle")).norm()
    if name == "uce":  # closed form: the keys/values of "star" -> the original's of the guide "", token by token
        # The tiny tokenizer gives "star" one token, so its positions 1.. pair with the empty prompt's 0.. (BOS on).
        star_tokens, guide_tokens = model.encode_prompt("star")[0, 1:], model.encode_prompt("")[0, :-1]
        projections = [m for n, m in model.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
        with torch.no_grad(), disable_lora(model.unet):
            targets = [m(guide_tokens) for m in projections]
        with torch.no_grad():
            return sum((m(star_tokens) - target).norm() for m, target in zip(projections, targets, strict=True))
    if name == "fmn":  # attention re-steering: the cross-attention mass on "star" (and EOS) -> 0
        mask = concept_mask(model, ["star"], "star", use_pooler=True)
        with torch.no_grad(), recording_concept_attention(model.unet) as attention:
            attention.start(mask.expand(2, -1))
            _probe(model, "star")
            return attention.loss()
    if name == "salun":  # random labels: eps(x_t, "a star photo") -> sg eps(x_t, "a circle photo")
        return (star - _probe(model, "a circle photo")).norm()
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
    if name in NOT_LORA:
        pytest.skip(NOT_LORA[name])
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
    if name in NOT_LORA:
        pytest.skip(NOT_LORA[name])
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


CONFIG_CHANGE = {"uce": "erase_scale=2.0", "sld": "preset=weak"}
"""A config change for methods that draw nothing at random (no seed to change)."""


@pytest.mark.parametrize("name", METHODS)
def test_rerun_with_other_config_is_refused(name, tmp_path):
    from darkminer.training.checkpoint import RunConflictError

    _erase(name, tiny_model(seed=0), tmp_path / "run")
    entry = get_method(name)
    changed = CONFIG_CHANGE.get(name, "seed=5")
    config = load_config(entry.config_class, None, [*TINY_OVERRIDES[name], changed])
    with pytest.raises(RunConflictError, match=changed.split("=")[0]):
        entry.method_class(config).erase(
            tiny_model(seed=0), ErasureRequest(["star"], ALTERNATIVE.get(name)), tmp_path / "run"
        )


@pytest.mark.parametrize("name", METHODS)
def test_rerun_of_finished_run_changes_nothing(name, tmp_path):
    out = _erase(name, tiny_model(seed=0), tmp_path / "run").output_dir
    if name in NOT_LORA:  # what it saved is its record
        first = (out / "erasure_config.json").read_text(), (out / "log.jsonl").read_text()
        _erase(name, tiny_model(seed=0), tmp_path / "run")
        assert ((out / "erasure_config.json").read_text(), (out / "log.jsonl").read_text()) == first
        return
    first = load_file(out / "pytorch_lora_weights.safetensors")
    _erase(name, tiny_model(seed=0), tmp_path / "run")
    second = load_file(out / "pytorch_lora_weights.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _images(model, prompt):
    return model.generate(prompt, num_images_per_prompt=2, seed=3, num_inference_steps=4)


def _image_goal_distance(name, model, original):
    """For a method that only changes sampling: how far the generated images are from its goal."""
    if name == "sld":  # guidance away from the safety concept S = "star": closeness of the images to S's images
        return -(_images(model, "a star photo") - original["star"]).norm()
    raise AssertionError(f"no goal defined for {name}")


@pytest.mark.parametrize("name", sorted(NOT_LORA))
def test_inference_time_method_guides_and_saves(name, tmp_path):
    from darkminer.models.safe_guidance import without_safe_guidance

    model = tiny_model(seed=0)
    out = _erase(name, model, tmp_path / "run").output_dir
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((out / "erasure_config.json").read_text())["weights"] is None
    for record in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()):
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values() if isinstance(v, float))

    # The weights are untouched; the erased prompt's images changed, towards the method's goal, reproducibly.
    torch.testing.assert_close(_probe(model, "a star photo"), _probe(tiny_model(seed=0), "a star photo"))
    with without_safe_guidance(model):
        before = _images(model, "a star photo")
        original = {"star": _images(model, "star")}
        goal_before = _image_goal_distance(name, model, original)
    after = _images(model, "a star photo")
    assert (after - before).abs().max() > 1e-3
    assert _image_goal_distance(name, model, original) < goal_before
    torch.testing.assert_close(_images(model, "a star photo"), after, rtol=0, atol=0)

    # Save -> load into a fresh model gives identical images.
    fresh = tiny_model(seed=0)
    record = apply_adapter(fresh, out)
    assert record["method"] == name and record["concepts"] == ["star"]
    torch.testing.assert_close(_images(fresh, "a star photo"), after, rtol=0, atol=1e-6)

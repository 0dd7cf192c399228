"""SLD sampling (`darkminer.models.safe_guidance`): the same sampling semantics as `generate`, every input path."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

from darkminer.methods import ErasureRequest
from darkminer.methods.sld import SLD, SLDConfig
from darkminer.models import ModelLoadError, load_model
from darkminer.models.adapters import ERASURE_CONFIG_NAME, apply_adapter, apply_erasure
from darkminer.models.safe_guidance import SafeGuidance, attach_safe_guidance, without_safe_guidance
from darkminer.provenance import UNRECORDED, code_digest

STEPS = 4


def _generate(model, *args, **kwargs):
    latents = model.prepare_latents(2, seed=7)
    return model.generate(*args, latents=latents, num_inference_steps=STEPS, **kwargs)


def test_sld_that_never_acts_samples_like_generate(model):
    plain = _generate(model, "a star photo", num_images_per_prompt=2)
    attach_safe_guidance(model, SafeGuidance.from_preset("star", "strong", sld_warmup_steps=STEPS))
    # Warm-up longer than the run: the safety term is never applied, so only the sampler is compared.
    torch.testing.assert_close(_generate(model, "a star photo", num_images_per_prompt=2), plain, rtol=0, atol=1e-5)


def test_sld_changes_images_and_takes_conditionings(model):
    plain = _generate(model, "a star photo", num_images_per_prompt=2)
    attach_safe_guidance(model, SafeGuidance.from_preset("star", "strong", sld_warmup_steps=0))
    guided = _generate(model, "a star photo", num_images_per_prompt=2)
    assert guided.shape == plain.shape and guided.dtype == torch.float32
    assert 0 <= guided.min() and guided.max() <= 1
    assert (guided - plain).abs().max() > 1e-3
    cond = model.encode_prompt("a star photo")
    torch.testing.assert_close(_generate(model, cond=cond, num_images_per_prompt=2), guided, rtol=0, atol=0)
    with without_safe_guidance(model):
        torch.testing.assert_close(_generate(model, "a star photo", num_images_per_prompt=2), plain)
    torch.testing.assert_close(_generate(model, "a star photo", num_images_per_prompt=2), guided, rtol=0, atol=0)


def test_sld_refuses_what_it_cannot_do(model):
    attach_safe_guidance(model, SafeGuidance.from_preset("star", "weak"))
    with pytest.raises(ValueError, match="already samples with SLD"):
        attach_safe_guidance(model, SafeGuidance.from_preset("star", "weak"))
    with pytest.raises(NotImplementedError, match="callback_on_step_end"):
        _generate(model, "a star photo", num_images_per_prompt=2, callback_on_step_end=lambda *a: None)
    with pytest.warns(UserWarning, match="classifier-free guidance"):
        unguided = _generate(model, "a star photo", num_images_per_prompt=2, guidance_scale=1.0)
    with without_safe_guidance(model):
        torch.testing.assert_close(
            _generate(model, "a star photo", num_images_per_prompt=2, guidance_scale=1.0), unguided
        )


def test_settings_validate():
    with pytest.raises(ValueError, match="Unknown SLD preset"):
        SafeGuidance.from_preset("star", "extreme")
    with pytest.raises(ValueError, match="sld_guidance_scale"):
        SafeGuidance.from_preset("star", "strong", sld_guidance_scale=0.5)
    with pytest.raises(ValueError, match="sld_mom_beta"):
        SLDConfig(sld_mom_beta=1.0)
    settings = SLDConfig(preset="medium", sld_threshold=0.5).settings(["star", "red"])
    assert settings.concept == "star, red" and settings.sld_threshold == 0.5 and settings.sld_guidance_scale == 1000


@pytest.mark.filterwarnings("ignore:The decode_latents method is deprecated:FutureWarning")
def test_sld_run_reproduces_in_plain_diffusers(tiny_dir, tmp_path):
    model = load_model(tiny_dir)
    config = SLDConfig(preset="strong", sld_warmup_steps=1, safety_concept="a star")
    out = SLD(config).erase(model, ErasureRequest(["star"]), tmp_path / "run").output_dir
    ours = _generate(model, "a star photo", num_images_per_prompt=2)

    # What the record tells a diffusers user to do.
    record = json.loads((out / ERASURE_CONFIG_NAME).read_text())["safe_guidance"]
    pipe = StableDiffusionPipelineSafe.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.safety_concept = record.pop("concept")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "a star photo",
        num_images_per_prompt=2,
        latents=model.prepare_latents(2, seed=7),
        num_inference_steps=STEPS,
        output_type="np",
        **record,
    ).images
    torch.testing.assert_close(torch.from_numpy(theirs).permute(0, 3, 1, 2), ours, rtol=0, atol=1e-5)


def test_apply_adapter_rejects_bad_sld_settings(model, tmp_path):
    (tmp_path / ERASURE_CONFIG_NAME).write_text(json.dumps({"safe_guidance": {"concept": "star"}}))
    with pytest.raises(ModelLoadError, match="SLD settings"):
        apply_adapter(model, tmp_path)


def test_an_erasure_names_its_code_and_an_evaluation_reads_it_back(tiny_dir, tmp_path):
    out = SLD(SLDConfig()).erase(load_model(tiny_dir), ErasureRequest(["star"]), tmp_path / "run").output_dir
    assert json.loads((out / ERASURE_CONFIG_NAME).read_text())["code"] == [code_digest()]
    assert apply_erasure(load_model(tiny_dir), out) == {"erasure": [code_digest()]}
    assert apply_erasure(load_model(tiny_dir), None) == {}
    # an erasure written before darkminer recorded its code
    record = json.loads((out / ERASURE_CONFIG_NAME).read_text())
    del record["code"]
    (out / ERASURE_CONFIG_NAME).write_text(json.dumps(record))
    assert apply_erasure(load_model(tiny_dir), out) == {"erasure": [UNRECORDED]}

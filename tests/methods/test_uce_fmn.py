"""UCE's closed form and token pairing; FMN's attention recorder (same outputs, right mass, processors restored)."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods import ErasureRequest
from darkminer.methods.fmn import concept_mask, recording_concept_attention
from darkminer.methods.uce import UCE, UCEConfig
from darkminer.methods.uce.method import edit_pairs
from darkminer.models import disable_lora
from darkminer.testing import tiny_model


def _probe(model, cond):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(len(cond), *model.latent_shape, generator=generator)
    with torch.no_grad():
        return model.predict_noise(latents, torch.tensor([300] * len(cond)), cond)


def test_edit_pairs_align_the_concept_with_the_guide():
    model = tiny_model(seed=0)
    encoded = model.encode_prompt(["a red star", "a red", "a red circle"]).double()
    keys, guide = edit_pairs(model, "a red {concept}", "star", "")
    # "star" is token 3 ("a"=1, "red"=2); the empty guide pairs it with "red", EOS with EOS, and so on.
    torch.testing.assert_close(keys, encoded[0, 3:])
    torch.testing.assert_close(guide, encoded[1, 2:-1])
    keys, guide = edit_pairs(model, "a red {concept}", "star", "circle")
    torch.testing.assert_close(guide, encoded[2, 3:])
    assert edit_pairs(model, "a red thing", "star", "") is None


def test_uce_without_preservation_maps_the_concept_onto_the_guide(tmp_path):
    # With a tiny regulariser and nothing to preserve the least-squares edit is (almost) exact: W c_i = W_old c*_i.
    model = tiny_model(seed=0)
    config = UCEConfig(preserve=[], regularization=1e-6)
    UCE(config).erase(model, ErasureRequest(["star"]), tmp_path / "run")
    keys, guide = edit_pairs(model, "{concept}", "star", "")
    projections = [m for n, m in model.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    with torch.no_grad():
        for module in projections:
            with disable_lora(model.unet):
                target = module(guide.float())
            torch.testing.assert_close(module(keys.float()), target, atol=2e-3, rtol=0)


def test_uce_preserves_what_it_is_told_to(tmp_path):
    prompts = ["circle", "star"]
    changes = {}
    for preserve_scale in (0.0, 100.0):
        model = tiny_model(seed=0)
        with disable_lora(model.unet):
            before = _probe(model, model.encode_prompt(prompts))
        config = UCEConfig(preserve=["circle"], preserve_scale=preserve_scale)
        UCE(config).erase(model, ErasureRequest(["star"]), tmp_path / f"run{preserve_scale}")
        after = _probe(model, model.encode_prompt(prompts))
        changes[preserve_scale] = (after - before).flatten(1).norm(dim=1)
    assert changes[100.0][0] < 0.2 * changes[0.0][0]  # the preserved concept barely moves
    assert changes[100.0][1] > 0  # the erased one still does


def test_recording_processor_keeps_outputs_and_restores_processors():
    model = tiny_model(seed=0)
    cond = model.encode_prompt(["a red star", "a photo"])
    processors = model.unet.attn_processors
    expected = _probe(model, cond)
    mask = torch.cat([concept_mask(model, ["a red star"], "star", use_pooler=False), torch.zeros(1, 16, dtype=bool)])
    with recording_concept_attention(model.unet) as attention:
        attention.start(mask)
        torch.testing.assert_close(_probe(model, cond), expected, atol=1e-5, rtol=0)
        assert 0 < attention.mean_mass() < 1 and attention.loss() > 0
        attention.start(torch.zeros_like(mask))
        _probe(model, cond)
        assert attention.loss() == 0 and attention.mean_mass() == 0
    assert model.unet.attn_processors == processors


def test_concept_mask():
    model = tiny_model(seed=0)
    ids = model.tokenize(["a red star"])[0]
    mask = concept_mask(model, ["a red star"], "star", use_pooler=False)[0]
    assert mask.tolist() == [i == 3 for i in range(len(ids))]
    pooled = concept_mask(model, ["a red star"], "star", use_pooler=True)[0]
    assert pooled.tolist() == [i == 3 or i >= 4 for i in range(len(ids))]  # EOS and its padding
    with pytest.raises(ValueError, match="does not contain"):
        concept_mask(model, ["a red circle"], "star", use_pooler=True)

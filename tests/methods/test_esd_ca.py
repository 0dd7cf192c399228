"""ESD and CA pieces: concept prompt templates, CA's prompt pairs, ESD's layer choice and its loss."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods.ca import prompt_pairs
from darkminer.methods.esd import EsdConfig, esd_loss, esd_target_modules, partial_trajectory
from darkminer.methods.prompts import fill, prompt_templates
from darkminer.models import add_lora
from darkminer.testing import tiny_model
from darkminer.worlds import ShapesWorld, World


def test_prompt_file_marks_the_concept_and_skips_comments(model, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# texts about stars\n\na {concept} in the sky\nstarfish and a star\na night sky\n")
    templates = prompt_templates(World(), "star", str(path))
    assert templates == ["a {concept} in the sky", "starfish and a {concept}", "a night sky"]
    assert [fill(t, "moon") for t in templates] == ["a moon in the sky", "starfish and a moon", "a night sky"]


def test_prompt_templates_default_and_errors(tmp_path):
    assert prompt_templates(World(), "star") == ["{concept}"]  # the generic world: the concept word alone
    shapes = prompt_templates(ShapesWorld(), "star")
    assert len(shapes) > 10 and all("{concept}" in t for t in shapes)  # ShapesWorld's training templates
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prompt_templates(World(), "star", str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no prompt"):
        prompt_templates(World(), "star", str(tmp_path / "empty.txt"))


def test_ca_pairs_replace_the_concept_by_the_anchor():
    pairs = prompt_pairs(["a photo of a red {concept}", "a night sky"], "star", "circle")
    assert pairs == [("a photo of a red star", "a photo of a red circle"), ("a night sky", "circle")]


def test_esd_variants_split_the_linear_layers(model):
    xattn = esd_target_modules(model.unet, "xattn")
    noxattn = esd_target_modules(model.unet, "noxattn")
    assert xattn and noxattn and not set(xattn) & set(noxattn)
    assert all(".attn2." in n for n in xattn)
    assert not any(n.startswith("time_embedding.") for n in noxattn)


def test_esd_narrow_variants_edit_cross_attention_keys_and_values_only(model):
    xattn = esd_target_modules(model.unet, "xattn")
    strict = esd_target_modules(model.unet, "xattn-strict")
    keys = esd_target_modules(model.unet, "xattn-keys")
    assert set(keys) < set(strict) < set(xattn)
    assert all(n.endswith(".attn2.to_k") for n in keys)
    assert {n.rsplit(".", 1)[1] for n in strict} == {"to_k", "to_v"}
    with pytest.raises(ValueError, match="train_method"):
        EsdConfig(train_method="xattn-values")


def test_esd_loss_vanishes_for_an_identity_adapter_with_eta_zero_and_the_empty_concept():
    # eta = 0 and c = 0: the target is eps*(x_t, 0), which an identity adapter predicts (up to batch rounding).
    model = tiny_model(seed=0)
    add_lora(model.unet, esd_target_modules(model.unet, "xattn"), rank=4)
    empty = model.encode_unconditional(2)
    x_t, t = partial_trajectory(model, empty, 2, 4, 3.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert esd_loss(model, x_t, t.expand(2), empty, empty, 0.0).item() < 1e-10
        assert esd_loss(model, x_t, t.expand(2), model.encode_prompt(["star"] * 2), empty, 1.0).item() > 0

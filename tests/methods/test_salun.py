"""SalUn's own guarantees on the tiny model: the saliency mask's size, updates only inside it, base weights intact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from darkminer.config import load_config
from darkminer.methods import ErasureRequest
from darkminer.methods.salun import SalUn, SalUnConfig
from darkminer.methods.salun.method import denoising_prompts
from darkminer.models import disable_lora
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model
from darkminer.worlds import ShapesWorld, World


def test_masked_update_saved_exactly(tmp_path):
    model = tiny_model(seed=0)
    original = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    config = load_config(SalUnConfig, None, [*TINY_METHOD_OVERRIDES["salun"], "mask_fraction=0.3"])
    out = SalUn(config).erase(model, ErasureRequest(["star"]), tmp_path / "run").output_dir

    masks = {k: v.bool() for k, v in load_file(out / "pool" / "saliency_mask.safetensors").items()}
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.3 * sum(m.numel() for m in masks.values()))

    changed = 0
    for name, mask in masks.items():
        layer = model.unet.get_submodule(name)
        assert torch.equal(layer.base_layer.weight, original[name + ".weight"])  # base weights never written
        delta = layer.get_delta_weight("default")
        assert delta[~mask].abs().max() < 1e-6  # the LoRA reproduces the masked update: zero outside the mask
        changed += int((delta[mask].abs() > 1e-6).sum())
    assert changed > kept // 2

    with disable_lora(model.unet):
        fresh = tiny_model(seed=0)
        cond = model.encode_prompt("a star photo")
        latents = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(
            model.predict_noise(latents, 500, cond), fresh.predict_noise(latents, 500, cond), rtol=0, atol=0
        )


def test_random_labels_relabel_each_prompt():
    world = World()
    forget, relabelled, labels = denoising_prompts(world, ["star"], SalUnConfig(random_labels=["circle", "square"]))
    assert forget == ["a star photo"]
    assert relabelled == [["a circle photo", "a square photo"]] and labels == {"star": ["circle", "square"]}
    with pytest.raises(ValueError, match="random_labels"):
        denoising_prompts(world, ["star"], SalUnConfig())
    with pytest.raises(ValueError, match="other than the erased"):
        denoising_prompts(world, ["star", "circle"], SalUnConfig(random_labels=["circle"]))
    forget, relabelled, labels = denoising_prompts(ShapesWorld(), ["star"], SalUnConfig())
    assert labels["star"] == ShapesWorld().related("star") and "star" not in labels["star"]
    assert len(forget) > 10 and all(len(row) == len(labels["star"]) for row in relabelled)

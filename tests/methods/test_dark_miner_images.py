"""The circumventing images x of Eq. 7-8 (A13): drawn by the original or the adapted model, or the mined ones."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig
from darkminer.models import add_lora, attention_value_modules, disable_lora
from darkminer.testing import tiny_model


def _images(model, images_from):
    config = DarkMinerConfig(circumvent=CircumventConfig(images_per_embedding=2, images_from=images_from))
    config.generate_steps = 2
    embedding = model.prompt_token_embeddings("a star photo", 4)
    return DarkMiner(config)._circumvent_images(model, embedding, torch.Generator().manual_seed(0))


def test_images_come_from_the_original_or_the_adapted_model():
    model = tiny_model()
    add_lora(model.unet, attention_value_modules(model.unet), rank=4)
    original = _images(model, "original")
    with torch.no_grad():  # an adapter that changes the model
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_images(model, "original"), original)
    adapted = _images(model, "adapted")
    assert not torch.allclose(adapted, original, atol=1e-3)
    with disable_lora(model.unet):
        torch.testing.assert_close(_images(model, "adapted"), original)


def test_unknown_image_model_is_refused():
    with pytest.raises(ValueError, match="circumvent.images_from"):
        CircumventConfig(images_from="pool_images")


def test_mined_images_are_the_pool_images_mining_used(tmp_path):
    from darkminer.config import load_config
    from darkminer.methods.base import ErasureRequest
    from darkminer.testing import TINY_METHOD_OVERRIDES
    from darkminer.training.checkpoint import load_tensors

    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "circumvent.images_from=mined"]
    overrides.append("mining.images_per_loop=2")
    DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
        tiny_model(), ErasureRequest(concepts=["star"]), tmp_path
    )
    pool = load_tensors(tmp_path / "pool" / "concept-0.safetensors")["latents"]
    latents = load_tensors(tmp_path / "checkpoint-1" / "embeddings.safetensors")["0.latents"]
    assert len(latents) == 2
    assert all(any(torch.equal(row, image) for image in pool) for row in latents)

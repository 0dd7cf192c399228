"""The circumventing images x of Eq. 7-8 (A13): drawn by the original or the adapted model, or the mined ones."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig
from darkminer.methods.dark_miner.method import MinedEmbedding, _latents
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


def _anchor_miner(**circumvent) -> DarkMiner:
    config = DarkMinerConfig(circumvent=CircumventConfig(images_per_embedding=2, images_from="anchor", **circumvent))
    config.generate_steps = 2
    return DarkMiner(config)


def test_anchor_images_are_the_original_s_images_of_each_c0_in_order():
    """A28: an entry's x are `images_per_embedding` images of each of its c0s, drawn by the original."""
    model = tiny_model()
    add_lora(model.unet, attention_value_modules(model.unet), rank=4)
    with torch.no_grad():  # an adapter that changes the model, which the anchor's images must not see
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    miner = _anchor_miner(anchor_concepts=["circle", "square"])
    embedding = model.prompt_token_embeddings("a red star photo", 4)
    latents = miner._entry_latents(model, embedding, "a red {concept} photo", torch.Generator().manual_seed(0))
    with disable_lora(model.unet):
        images = model.generate(
            ["a red circle photo", "a red square photo"],
            num_images_per_prompt=2,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=2,
            guidance_scale=miner.config.guidance_scale,
        )
    assert latents.shape[0] == 4
    torch.testing.assert_close(latents, _latents(model, images))


def _steps_of(miner: DarkMiner, values: tuple[int, ...]) -> list[tuple[list[float], list[int]]]:
    """Circumvents a two-entry pool of 'a star photo' on anchors circle and square, each entry's latents blocks of 2
    images filled with `values` in turn; returns, per step, the value of each image drawn and the index of the c0 its
    l_c target is (0 circle, 1 square)."""
    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet), rank=2, alpha=2.0)
    blocks = torch.cat([torch.full((2, 4, 8, 8), float(v)) for v in values])
    embedding = model.prompt_token_embeddings("a star photo", 4)
    pool = [MinedEmbedding("star", i, embedding, blocks, "a {concept} photo") for i in range(2)]
    targets = model.encode_prompt(["a circle photo", "a square photo"])
    b = miner.config.circumvent.batch_size
    images, conds = [], []
    add_noise, predict = model.add_noise, model.predict_noise
    model.add_noise = lambda x0, noise, t: images.append(x0[:, 0, 0, 0]) or add_noise(x0, noise, t)
    model.predict_noise = lambda x_t, t, cond: conds.append(cond[:b]) or predict(x_t, t, cond)  # l_c's targets
    miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 1)
    return [
        (step_images.tolist(), [next(i for i, c0 in enumerate(targets) if torch.equal(row, c0)) for row in step_conds])
        for step_images, step_conds in zip(images, conds, strict=True)
    ]


@pytest.mark.parametrize("draw", ["image", "embedding"])
def test_each_anchor_image_is_pulled_to_the_c0_that_drew_it(draw):
    """A28: l_c's target for an image of c0 j is c0 j's prediction; with A27's 'embedding' draw every image of the
    pool's i-th c comes from its i-th c0."""
    miner = _anchor_miner(
        steps=6, batch_size=3, anchor_concepts=["circle", "square"], current_prob=1.0, anchor_draw=draw
    )
    steps = _steps_of(miner, (1, 2))  # c0 0's images, c0 1's
    drawn = [(int(value) - 1, c0) for values, c0s in steps for value, c0 in zip(values, c0s, strict=True)]
    assert all(block == c0 for block, c0 in drawn)
    assert {block for block, _ in drawn} == ({1} if draw == "embedding" else {0, 1})


def test_anchor_images_with_refined_embeddings_are_refused():
    with pytest.raises(ValueError, match="refine_every"):
        CircumventConfig(images_from="anchor", refine_every=5)


def test_a_run_on_anchor_images_keeps_each_c0_s_images_per_entry(tmp_path):
    from darkminer.config import load_config
    from darkminer.methods.base import ErasureRequest
    from darkminer.testing import TINY_METHOD_OVERRIDES
    from darkminer.training.checkpoint import load_tensors

    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "circumvent.images_from=anchor"]
    DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
        tiny_model(), ErasureRequest(concepts=["star"]), tmp_path
    )
    latents = load_tensors(tmp_path / "checkpoint-1" / "embeddings.safetensors")["0.latents"]
    assert len(latents) == 2 * 2  # two images of each of the two anchors of the tiny overrides


def test_both_images_are_c_s_then_each_c0_s():
    """A28's 'both': the original's images of c, then those of each c0, from one stream in that order."""
    model = tiny_model()
    config = DarkMinerConfig(
        circumvent=CircumventConfig(
            images_per_embedding=2, images_from="both", batch_size=4, anchor_concepts=["circle", "square"]
        )
    )
    config.generate_steps = 2
    miner = DarkMiner(config)
    embedding = model.prompt_token_embeddings("a red star photo", 4)
    latents = miner._entry_latents(model, embedding, "a red {concept} photo", torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    of_c0 = _anchor_miner(anchor_concepts=["circle", "square"])._entry_latents(
        model, embedding, "a red {concept} photo", generator
    )
    of_c = miner._circumvent_images(model, embedding, generator)
    assert latents.shape[0] == 2 + 2 * 2
    torch.testing.assert_close(latents, torch.cat([of_c, of_c0]))


@pytest.mark.parametrize("draw", ["image", "embedding"])
def test_both_puts_half_of_each_batch_on_c_s_images(draw):
    """A28's 'both': the first half of each batch is c's images, each pulled to a c0 drawn as without A28; the rest
    c0s' images, each pulled to the c0 that drew it."""
    miner = _anchor_miner(
        steps=8, batch_size=4, anchor_concepts=["circle", "square"], current_prob=1.0, anchor_draw=draw
    )
    miner.config.circumvent.images_from = "both"
    for step_images, drawn in _steps_of(miner, (0, 1, 2)):  # c's images, c0 0's, c0 1's
        assert step_images[:2] == [0.0, 0.0]
        assert [int(v) - 1 for v in step_images[2:]] == drawn[2:]
        if draw == "embedding":  # the pool's second c, its second c0, for every image
            assert drawn == [1, 1, 1, 1]


def test_both_needs_two_images_per_batch():
    with pytest.raises(ValueError, match="batch_size >= 2"):
        CircumventConfig(images_from="both", batch_size=1)

"""A26: l_p (Eq. 8) holds its conditions on the concept's images (the paper) or on images the original draws from the
anchor prompts (`circumvent.preserve_on`)."""

from __future__ import annotations

import json

import pytest
import torch

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig, MiningConfig, PoolConfig
from darkminer.methods.dark_miner.method import MinedEmbedding
from darkminer.models import add_lora, attention_value_modules
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="preserve_on"):
        CircumventConfig(preserve_on="pool")
    with pytest.raises(ValueError, match="preserve_on=concept or preserve_relative=false"):
        CircumventConfig(preserve_on="anchor", preserve_relative=True, alpha_u=1.0)


def test_the_anchor_images_come_from_the_anchors_and_the_preserve_prompts():
    plain = DarkMiner(DarkMinerConfig(circumvent=CircumventConfig(anchor=["a circle photo"], preserve_prompts=["x"])))
    assert plain._anchor_prompts() == ["a circle photo", "x"]
    paired = DarkMiner(
        DarkMinerConfig(
            pool=PoolConfig(prompt="a {concept} picture"),
            circumvent=CircumventConfig(anchor_concepts=["circle", "square"]),
        )
    )
    assert paired._anchor_prompts() == ["a circle picture", "a square picture"]


@pytest.mark.parametrize("preserve_on", ["concept", "anchor"])
def test_l_p_sees_the_images_preserve_on_names(preserve_on):
    """Each UNet row of l_c sees the concept's noisy images; each row of l_p (its targets and its predictions) sees
    them too (the paper) or the anchor images' (A26), here far from zero where the concept's are zero."""
    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet), rank=4, alpha=4.0)
    circumvent = CircumventConfig(
        steps=1, batch_size=2, preserve=["anchor", "zero"], anchor=["a circle photo"], preserve_on=preserve_on
    )
    miner = DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4), circumvent=circumvent))
    miner._kept = torch.full((3, 4, 8, 8), 50.0) if preserve_on == "anchor" else None
    pool = [MinedEmbedding("star", 0, model.prompt_token_embeddings("a star photo", 4), torch.zeros(3, 4, 8, 8))]
    calls = []
    predict = model.predict_noise
    model.predict_noise = lambda x_t, t, cond: calls.append(x_t.detach().clone()) or predict(x_t, t, cond)
    miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
    (x_t,) = calls  # one call (one_call): frozen rows, then adapted ones, two images each
    far = [bool(row.mean() > 1.0) for row in x_t]
    if preserve_on == "concept":  # c0 (l_c's and l_p's target), 0*c | c, c0, 0*c
        assert far == [False] * 10
    else:  # c0 on Eq. 7's x_t, c0 and 0*c held | c on Eq. 7's x_t, c0 and 0*c held
        assert far == [False] * 2 + [True] * 4 + [False] * 2 + [True] * 4


def test_a_run_draws_the_anchor_images_and_holds_them(tmp_path):
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "circumvent.preserve_on=anchor"]
    miner = DarkMiner(load_config(DarkMinerConfig, None, overrides))
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    assert len(miner._kept) == len(miner._anchor_prompts()) * miner.config.circumvent.images_per_embedding
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [x for r in records if "circumvent" in r for x in r["circumvent"]["l_p"]]
    assert losses and losses[0] < 1e-10 and max(losses) > 0  # the adapters start as the identity


def test_the_anchor_images_are_the_originals_and_the_same_on_resume():
    """A resumed run has its adapters loaded when it draws A26's images: they are the original's, from their own
    stream, so they equal those of the run before it was killed."""
    model = tiny_model()
    miner = DarkMiner(DarkMinerConfig(circumvent=CircumventConfig(preserve_on="anchor", images_per_embedding=2)))
    first = miner._anchor_latents(model)
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet), rank=4, alpha=4.0)
    with torch.no_grad():
        for name, parameter in model.unet.named_parameters():
            if "lora_" in name:
                parameter.normal_()
    torch.testing.assert_close(miner._anchor_latents(model), first, rtol=0, atol=0)

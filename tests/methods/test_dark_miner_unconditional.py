"""A20: l_u pulls the empty prompt's prediction on the circumventing images to the original's at c0. A21: l_p holds
each preserved condition relative to the empty prompt."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig, MiningConfig
from darkminer.methods.dark_miner.method import MinedEmbedding
from darkminer.models import add_lora, attention_value_modules, disable_lora
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model


def test_alpha_u_with_the_empty_prompt_held_is_refused():
    with pytest.raises(ValueError, match="unconditional"):
        CircumventConfig(alpha_u=1.0, preserve=["anchor", "unconditional"])
    with pytest.raises(ValueError, match="alpha_u"):
        CircumventConfig(alpha_u=-1.0)
    with pytest.raises(ValueError, match="preserve_relative"):
        CircumventConfig(preserve_relative=True, alpha_u=1.0, preserve=["anchor", "unconditional"])
    with pytest.raises(ValueError, match="alpha_u > 0"):
        CircumventConfig(preserve_relative=True)


def test_l_u_is_logged_only_when_on(tmp_path):
    def records(directory, *extra):
        overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", *extra]
        DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
            tiny_model(), ErasureRequest(concepts=["star"]), directory
        )
        lines = (directory / "log.jsonl").read_text().splitlines()
        return [r["circumvent"] for r in map(json.loads, lines) if "circumvent" in r]

    assert all("l_u" not in r for r in records(tmp_path / "off"))
    on = records(tmp_path / "on", "circumvent.alpha_u=1.0")
    assert on and all(len(r["l_u"]) == len(r["l_c"]) for r in on)


def _empty_to_anchor_gap(model, x_t, t, anchor) -> float:
    with torch.no_grad():
        empty = model.predict_noise(x_t, t, model.encode_unconditional(len(x_t)))
        with disable_lora(model.unet):
            target = model.predict_noise(x_t, t, anchor.expand(len(x_t), -1, -1))
    return float(F.mse_loss(empty, target))


def test_l_u_alone_brings_the_empty_prompts_prediction_to_the_anchors():
    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet), rank=4, alpha=4.0)
    images = torch.randn(4, 4, 8, 8)
    generator = torch.Generator().manual_seed(1)
    t = torch.randint(0, model.num_train_timesteps, (4,), generator=generator)
    x_t = model.add_noise(images, torch.randn(images.shape, generator=generator), t)
    anchor = model.encode_prompt(["a photo"])
    before = _empty_to_anchor_gap(model, x_t, t, anchor)
    circumvent = CircumventConfig(
        steps=40, batch_size=4, optimizer="adam", lr=0.01, alpha_c=0.0, alpha_p=0.0, alpha_u=1.0, preserve=[]
    )
    miner = DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4), circumvent=circumvent))
    pool = [MinedEmbedding("star", 0, model.prompt_token_embeddings("a star photo", 4), images)]
    miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
    assert _empty_to_anchor_gap(model, x_t, t, anchor) < 0.5 * before


def _guidance_direction_gap(model, x_t, t, held) -> float:
    """How far eps(x_t|u) - eps(x_t|empty) of the adapted model is from the original's, for the condition `held`."""
    with torch.no_grad():
        cond, empty = held.expand(len(x_t), -1, -1), model.encode_unconditional(len(x_t))
        adapted = model.predict_noise(x_t, t, cond) - model.predict_noise(x_t, t, empty)
        with disable_lora(model.unet):
            original = model.predict_noise(x_t, t, cond) - model.predict_noise(x_t, t, empty)
    return float(F.mse_loss(adapted, original))


def test_relative_l_p_moves_the_held_conditions_with_the_empty_prompt():
    """A21: with the empty prompt pulled to the anchor (A20), l_p relative to it keeps each held condition's guidance
    direction, so the anchor's prediction moves by what the empty prompt's does; absolute l_p does not."""
    torch.manual_seed(0)
    images = torch.randn(4, 4, 8, 8)
    gaps = {}
    for relative in (False, True):
        model = tiny_model()
        torch.manual_seed(0)
        add_lora(model.unet, attention_value_modules(model.unet), rank=4, alpha=4.0)
        t = torch.randint(0, model.num_train_timesteps, (4,), generator=torch.Generator().manual_seed(2))
        x_t = model.add_noise(images, torch.randn(images.shape, generator=torch.Generator().manual_seed(3)), t)
        circumvent = CircumventConfig(
            steps=60,
            batch_size=4,
            optimizer="adam",
            lr=0.01,
            alpha_c=0.0,
            alpha_p=1.0,
            alpha_u=1.0,
            preserve=["anchor"],
            anchor=["a circle photo"],
            preserve_relative=relative,
        )
        miner = DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4), circumvent=circumvent))
        pool = [MinedEmbedding("star", 0, model.prompt_token_embeddings("a star photo", 4), images)]
        miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
        gaps[relative] = _guidance_direction_gap(model, x_t, t, model.encode_prompt(["a circle photo"]))
    assert gaps[True] < 0.5 * gaps[False]

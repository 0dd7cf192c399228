"""A23: each mined c pulled to its own initial prompt with another concept in the concept's place."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig, MiningConfig
from darkminer.methods.dark_miner.method import MinedEmbedding
from darkminer.methods.prompts import prompt_templates
from darkminer.models import add_lora, attention_value_modules
from darkminer.testing import tiny_model


def _miner(**circumvent) -> DarkMiner:
    return DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4), circumvent=CircumventConfig(**circumvent)))


def _entry(model, template):
    return MinedEmbedding("star", 0, model.prompt_token_embeddings("a star photo", 4), torch.zeros(1), template)


def test_anchors_are_the_template_with_each_anchor_concept():
    model = tiny_model()
    miner = _miner(anchor_concepts=["circle", "square"])
    anchors = model.encode_prompt(["a photo"])
    paired = miner._paired_anchors(model, _entry(model, "a red {concept} photo"), anchors)
    torch.testing.assert_close(paired, model.encode_prompt(["a red circle photo", "a red square photo"]))


@pytest.mark.parametrize("template", [None, "a red photo"])
def test_a_template_that_does_not_name_the_concept_keeps_the_anchor(template):
    model = tiny_model()
    anchors = model.encode_prompt(["a photo"])
    paired = _miner(anchor_concepts=["circle"])._paired_anchors(model, _entry(model, template), anchors)
    assert paired is anchors


def test_without_anchor_concepts_every_entry_keeps_the_anchor():
    model = tiny_model()
    anchors = model.encode_prompt(["a photo"])
    assert _miner()._paired_anchors(model, _entry(model, "a {concept}"), anchors) is anchors


def test_mining_returns_the_template_the_kept_embedding_started_from():
    model = tiny_model()
    miner = DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4, init="concept_prompts", steps=1, restarts=2)))
    embedding, _, _, template = miner._mine(
        model, "star", torch.randn(8, 4, 8, 8), torch.Generator().manual_seed(0), None, 0
    )
    assert template in prompt_templates(miner._world, "star")


def test_circumventing_trains_with_paired_anchors():
    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet), rank=2, alpha=2.0)
    miner = _miner(steps=2, batch_size=2, anchor_concepts=["circle", "square"])
    entry = MinedEmbedding(
        "star", 0, model.prompt_token_embeddings("a star photo", 4), torch.randn(3, 4, 8, 8), "a {concept} photo"
    )
    history = miner._circumvent(model, [entry], torch.Generator().manual_seed(0), None, 0)
    assert len(history["l_c"]) == 2 and all(torch.isfinite(torch.tensor(history["loss"])))


def test_empty_anchor_concepts_are_refused():
    with pytest.raises(ValueError, match="anchor_concepts"):
        CircumventConfig(anchor_concepts=["circle", " "])


def test_a_resumed_run_reads_back_each_entry_s_template(tmp_path):
    from types import SimpleNamespace

    from darkminer.config import load_config
    from darkminer.methods.base import ErasureRequest
    from darkminer.testing import TINY_METHOD_OVERRIDES

    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "mining.init=concept_prompts"]
    miner = DarkMiner(load_config(DarkMinerConfig, None, overrides))
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    latest = SimpleNamespace(latest=lambda: (1, tmp_path / "checkpoint-1"))
    _, pool, _ = miner._resume(tiny_model(), latest)
    assert len(pool) == 1 and pool[0].template in prompt_templates(miner._world, "star")


@pytest.mark.parametrize("draw", ["image", "embedding"])
def test_anchor_draw_gives_each_embedding_one_c0_or_each_image_its_own(draw):
    """A27: with 'embedding' the pool's i-th c is pulled to its i-th c0 (here the last of two, 'square') at every
    step; with 'image' (the default) each image draws one, so both concepts appear as targets."""
    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet), rank=2, alpha=2.0)
    miner = _miner(steps=4, batch_size=2, anchor_concepts=["circle", "square"], current_prob=1.0, anchor_draw=draw)
    pool = [
        MinedEmbedding(
            "star", i, model.prompt_token_embeddings("a star photo", 4), torch.randn(3, 4, 8, 8), "a {concept} photo"
        )
        for i in range(2)
    ]
    targets = model.encode_prompt(["a circle photo", "a square photo"])
    seen = []
    predict = model.predict_noise
    model.predict_noise = lambda x_t, t, cond: seen.extend(cond[:2]) or predict(x_t, t, cond)  # l_c's frozen rows
    miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
    drawn = {next(i for i, target in enumerate(targets) if torch.equal(row, target)) for row in seen}
    assert drawn == ({1} if draw == "embedding" else {0, 1})


def test_a_bad_anchor_draw_is_refused():
    with pytest.raises(ValueError, match="anchor_draw"):
        CircumventConfig(anchor_draw="loop")

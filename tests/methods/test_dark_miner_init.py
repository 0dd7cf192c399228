"""Dark Miner's mining initialisation (A2): the pool prompt, random, or a prompt drawn from the concept's texts."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import MiningConfig, PoolConfig
from darkminer.testing import tiny_model


def _init(model, prompt_file=None, init="concept_prompts", seed=0):
    config = DarkMinerConfig(mining=MiningConfig(init=init, length=8, prompt_file=prompt_file))
    return DarkMiner(config)._initial_embedding(model, "star", torch.Generator().manual_seed(seed))


def test_concept_prompts_init_starts_from_a_prompt_of_the_file(tmp_path):
    model = tiny_model()
    texts = ["a red {concept}", "the blue star", "a photo of a dog"]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n")
    allowed = [model.prompt_token_embeddings(t.replace("{concept}", "star"), 8) for t in texts]
    drawn = set()
    for seed in range(12):
        start = _init(model, str(path), seed=seed)
        matches = [i for i, a in enumerate(allowed) if torch.equal(start, a)]
        assert len(matches) == 1
        drawn.add(matches[0])
    assert len(drawn) > 1  # a different prompt per loop, not always the first


def test_pool_prompt_init_is_the_default():
    model = tiny_model()
    torch.testing.assert_close(_init(model, init="prompt"), model.prompt_token_embeddings("a star photo", 8))


def test_missing_prompt_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        _init(tiny_model(), str(tmp_path / "nope.txt"))


def _pool_prompts(source, prompt_file=None, size=5):
    config = DarkMinerConfig(
        pool=PoolConfig(size=size, source=source), mining=MiningConfig(init="prompt", prompt_file=prompt_file)
    )
    return DarkMiner(config)._pool_prompts(tiny_model(), "star")


def test_pool_repeats_its_template_by_default():
    assert _pool_prompts("prompt") == ["a star photo"] * 5


def test_pool_from_concept_prompts_cycles_through_the_texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("a red {concept}\n# a comment\nthe blue star\n")
    assert _pool_prompts("concept_prompts", str(path)) == ["a red star", "the blue star"] * 2 + ["a red star"]


def test_unknown_pool_source_is_refused():
    with pytest.raises(ValueError, match="pool.source"):
        PoolConfig(source="folder")


def test_pool_source_with_an_image_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pool.image_dir"):
        PoolConfig(source="concept_prompts", image_dir=str(tmp_path))

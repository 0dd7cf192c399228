"""Dark Miner's mining stage (Eq. 5): restarts mined side by side (A17) and CCE-style batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import MiningConfig
from darkminer.methods.dark_miner.method import _clip_norm
from darkminer.testing import tiny_model


def _miner(**mining):
    return DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4, init="random", **mining)))


def test_each_restart_has_its_own_loss():
    model = tiny_model()
    miner = _miner(restarts=2)
    embedding = torch.randn(2, 4, model.text_encoder.config.hidden_size) * 0.1
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 8, 8, generator=generator)
    noise, t = torch.randn(x0.shape, generator=generator), torch.randint(0, 1000, (6,), generator=generator)
    losses = miner._mining_losses(model, embedding, x0, noise, t)
    for r in range(2):
        rows = slice(3 * r, 3 * r + 3)
        cond = model.encode_prompt(token_embeds=embedding[r : r + 1]).expand(3, -1, -1)
        pred = model.predict_noise(model.add_noise(x0[rows], noise[rows], t[rows]), t[rows], cond)
        torch.testing.assert_close(losses[r], F.mse_loss(pred, noise[rows]))


@pytest.mark.parametrize("restarts, batch_size", [(1, None), (3, None), (2, 5)])
def test_mining_returns_one_embedding(restarts, batch_size):
    model = tiny_model()
    miner = _miner(restarts=restarts, batch_size=batch_size, steps=4, images_per_loop=3)
    pool = torch.randn(8, 4, 8, 8)
    embedding, picks, history, template = miner._mine(model, "star", pool, torch.Generator().manual_seed(0), None, 0)
    assert embedding.shape == (1, 4, model.text_encoder.config.hidden_size)
    assert len(picks) == 3 and len(history) == 4 and template == miner.config.pool.prompt


def test_mining_keeps_the_restart_that_reproduces_the_images_best(monkeypatch):
    model = tiny_model()
    miner = _miner(restarts=3, steps=1)
    calls = []
    original = DarkMiner._mining_losses

    def spy(self, model, embedding, x0, noise, t):
        losses = original(self, model, embedding, x0, noise, t)
        calls.append((embedding.detach().clone(), losses.detach().clone()))
        return losses

    monkeypatch.setattr(DarkMiner, "_mining_losses", spy)
    embedding, *_ = miner._mine(model, "star", torch.randn(8, 4, 8, 8), torch.Generator().manual_seed(1), None, 0)
    final, probe = calls[-1]  # the last call scores the mined embeddings
    assert torch.equal(embedding, final[int(probe.argmin()) : int(probe.argmin()) + 1])


def test_gradient_clip_is_per_embedding():
    grad = torch.stack([torch.full((2, 3), 10.0), torch.full((2, 3), 0.01)])
    _clip_norm(grad, 1.0)
    assert torch.linalg.vector_norm(grad[0]) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(grad[1], torch.full((2, 3), 0.01))


@pytest.mark.parametrize("field, value", [("restarts", 0), ("batch_size", 0)])
def test_bad_mining_sizes_are_refused(field, value):
    with pytest.raises(ValueError, match=f"mining.{field}"):
        MiningConfig(**{field: value})


def _circumvent(refine_every):
    from darkminer.methods.dark_miner.config import CircumventConfig
    from darkminer.methods.dark_miner.method import MinedEmbedding
    from darkminer.models import add_lora, attention_value_modules

    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, attention_value_modules(model.unet, "all"), rank=2, alpha=2.0)
    circumvent = CircumventConfig(steps=3, batch_size=2, optimizer="adam", refine_every=refine_every)
    miner = DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4), circumvent=circumvent))
    start = model.prompt_token_embeddings("a star photo", 4)
    pool = [MinedEmbedding("star", 0, start.clone(), torch.randn(3, 4, 8, 8))]
    miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
    return start, pool[0].embedding


def test_refining_moves_the_mined_embedding_that_later_loops_replay():
    start, refined = _circumvent(refine_every=1)
    assert refined.shape == start.shape and not torch.equal(refined, start)


def test_without_refining_the_mined_embedding_is_kept():
    start, kept = _circumvent(refine_every=0)
    assert torch.equal(kept, start)

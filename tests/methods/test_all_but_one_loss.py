"""All but One's loss: zero for an identity adapter when target and alternative coincide, positive otherwise."""

from __future__ import annotations

import pytest
import torch

from darkminer.methods.all_but_one import all_but_one_loss
from darkminer.models import DiffusionModel, add_lora
from darkminer.testing import tiny_model


@pytest.fixture(scope="module")
def lora_model() -> DiffusionModel:
    """The tiny model with a fresh (identity) LoRA on the cross-attention keys and values."""
    model = tiny_model(seed=0)
    targets = [n for n, _ in model.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    assert targets
    add_lora(model.unet, targets, rank=4)
    return model


@pytest.fixture(scope="module")
def batch(lora_model: DiffusionModel):
    """(x_t, t, star cond, circle cond, empty cond) for a batch of two."""
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, *lora_model.latent_shape, generator=generator)
    t = torch.tensor([50, 600])
    with torch.no_grad():
        star, circle = lora_model.encode_prompt(["a star photo", "a circle photo"]).chunk(2)
        empty = lora_model.encode_unconditional(2)
    return x_t, t, star.expand(2, -1, -1), circle.expand(2, -1, -1), empty


def test_loss_is_zero_for_the_identity_adapter_and_the_same_condition(lora_model, batch):
    x_t, t, star, _, empty = batch
    with torch.no_grad():
        total, guidance, unconditional = all_but_one_loss(lora_model, x_t, t, star, star, empty, weight=1.0)
    assert total.item() == guidance.item() == unconditional.item() == 0.0


def test_loss_is_positive_when_target_and_alternative_differ(lora_model, batch):
    x_t, t, star, circle, empty = batch
    total, guidance, unconditional = all_but_one_loss(lora_model, x_t, t, star, circle, empty, weight=1.0)
    assert guidance.item() > 0
    assert unconditional.item() == 0.0  # the adapter starts as the identity
    torch.testing.assert_close(total, guidance + unconditional)
    total.backward()
    grads = [p.grad for p in lora_model.unet.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    lora_model.unet.zero_grad(set_to_none=True)


def test_unconditional_weight_scales_only_its_term(lora_model, batch):
    x_t, t, star, circle, empty = batch
    with torch.no_grad():
        _, guidance, _ = all_but_one_loss(lora_model, x_t, t, star, circle, empty, weight=1.0)
        total, guidance_0, _ = all_but_one_loss(lora_model, x_t, t, star, circle, empty, weight=0.0)
    torch.testing.assert_close(guidance, guidance_0)
    torch.testing.assert_close(total, guidance_0)

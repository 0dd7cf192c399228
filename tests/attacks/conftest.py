"""Fixtures for the attack tests: a tiny "erased" model."""

from __future__ import annotations

import pytest
import torch

from darkminer.models import DiffusionModel, add_lora, attention_value_modules
from darkminer.testing import tiny_model


def erased_tiny_model(seed: int = 0) -> DiffusionModel:
    """`tiny_model` with a random (non-zero) LoRA on every attention value projection: a stand-in for an erased
    model whose predictions differ from the original's (adapters disabled)."""
    model = tiny_model(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        add_lora(model.unet, attention_value_modules(model.unet), rank=4, alpha=4)
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.freeze()


@pytest.fixture(scope="module")
def erased() -> DiffusionModel:
    """One erased tiny model per test module; attacks must leave it unchanged (checked in the table)."""
    return erased_tiny_model()

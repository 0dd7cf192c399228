"""Fixtures for the model tests: fresh tiny models, one saved pipeline directory per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from darkminer.models import DiffusionModel
from darkminer.testing import tiny_model, tiny_model_dir


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads spin against the
    # other load and run ~100x slower. Session-wide, so module- and session-scoped fixtures get it too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> DiffusionModel:
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_model(seed=0)` saved as a pipeline directory; tests must not modify it."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "sd", seed=0)


@pytest.fixture
def probe(model: DiffusionModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed (latents, timesteps, cond) to compare UNet predictions."""
    generator = torch.Generator().manual_seed(123)
    latents = torch.randn(2, *model.latent_shape, generator=generator)
    timesteps = torch.tensor([10, 700])
    cond = model.encode_prompt(["a red circle", "a photo of a cat"])
    return latents, timesteps, cond

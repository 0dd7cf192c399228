"""A concept's evaluation suite: what the attacks start from and what judges their images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models import DiffusionModel, disable_lora


@dataclass
class Suite:
    """A concept on a model as the evaluation and the attacks see it.

    Attributes:
        concept: the concept word.
        detector: judges images (`__call__` → scores and decisions, `kind`, `metadata()`).
        normal: the prompts Ratio and Score are measured on.
        attack_sources: the normal prompts the attacks start from (UnlearnDiff and P4D attack each one; CCE inverts
            the detector's top-scoring images of them).
        banned: the words that name the concept (the sanity check bans them from discrete adversarial prompts).
    """

    concept: str
    detector: Any
    normal: list[str]
    attack_sources: list[str]
    banned: list[str]

    def attack_images(
        self, model: DiffusionModel, per_prompt: int, pool: int, seed: int, steps: int = 25
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The original model's images for the attacks: `per_prompt` of each attack source in prompt order (UnlearnDiff
        and P4D attack each prompt with its own), and the `pool` of them the detector scores highest (CCE's)."""
        from ..models.sampling import generate_batched

        with disable_lora(model.unet):
            images = generate_batched(model, self.attack_sources, per_prompt, seed, steps, desc="attack images")
        return images, self.top_images(images, pool)

    def top_images(self, images: torch.Tensor, count: int) -> torch.Tensor:
        """The `count` images the detector scores highest (CCE's inversion data, App. B)."""
        return images[self.detector(images).scores.argsort(descending=True)[:count]]

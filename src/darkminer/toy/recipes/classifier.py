"""Recipe: the ShapesWorld classifier, trained on renders with blur and noise (it judges generated images)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..classifier import HEADS, ShapesClassifier
from ..data import ShapesData
from .common import RecipeSettings, run_steps


def augment(images01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half the batch a little and add pixel noise, as generated images differ from renders that way."""
    n = images01.shape[0]
    blurred = F.avg_pool2d(F.pad(images01, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(n, 1, 1, 1, generator=generator) < 0.5).float()
    mixed = pick * (0.5 * images01 + 0.5 * blurred) + (1 - pick) * images01
    noise = torch.randn(mixed.shape, generator=generator) * torch.rand(n, 1, 1, 1, generator=generator) * 0.06
    return (mixed + noise).clamp(0, 1)


def train_classifier(data: ShapesData, settings: RecipeSettings) -> ShapesClassifier:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = ShapesClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)

    def step(_):
        images, targets, _, _ = data.batch(rng, settings.batch_size)
        logits = model(augment((images + 1) / 2, generator))
        return sum(F.cross_entropy(logits[name], targets[:, i]) for i, name in enumerate(HEADS))

    model.train()
    run_steps("classifier", settings, optimizer, step)
    return model.eval().requires_grad_(False)

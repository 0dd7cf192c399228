"""What the ShapesWorld recipes share: a seeded step loop with a progress bar and a learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class RecipeSettings:
    """Settings every ShapesWorld recipe takes."""

    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    warmup: int = 100


def cosine_lr(step: int, settings: RecipeSettings) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def run_steps(name: str, settings: RecipeSettings, optimizer: torch.optim.Optimizer, step_fn) -> list[float]:
    """Call `step_fn(step) -> loss tensor` `settings.steps` times with the schedule applied; returns the losses."""
    losses = []
    bar = tqdm(range(settings.steps), desc=name, mininterval=5, dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings)
        loss = step_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: non-finite loss {loss.item()} at step {step}; lower the learning rate.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return losses

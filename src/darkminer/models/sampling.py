"""Sampling many prompts in batches, with seeds that depend only on the prompts' order."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .wrapper import DiffusionModel


def generate_batched(
    model: DiffusionModel,
    prompts: list[str],
    per_prompt: int,
    seed: int,
    steps: int = 25,
    batch: int = 128,
    desc: str = "sampling",
) -> torch.Tensor:
    """`per_prompt` images for every prompt, about `batch` images per call; each chunk is seeded with `seed` plus
    the index of its first prompt, so the same prompts and seed give the same noise (e.g. before and after). A
    progress bar labelled `desc` counts the images."""
    step = max(1, batch // per_prompt)
    chunks = []
    with tqdm(total=len(prompts) * per_prompt, desc=desc, unit="img", leave=False, mininterval=2) as bar:
        for i in range(0, len(prompts), step):
            chunk = prompts[i : i + step]
            chunks.append(
                model.generate(chunk, num_images_per_prompt=per_prompt, seed=seed + i, num_inference_steps=steps)
            )
            bar.update(len(chunk) * per_prompt)
    return torch.cat(chunks)

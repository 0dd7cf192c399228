"""The ShapesWorld training set: pre-rendered images with labels, captions drawn afresh at every step."""

from __future__ import annotations

import numpy as np
import torch

from .captions import IMPLICIT_PHRASES, sample_caption, sample_implicit_caption
from .render import ALL_LABELS, ShapeLabel, render_batch, to_tensor_range
from .tokenizer import filler_words

_PHRASES = tuple(IMPLICIT_PHRASES)


class ShapesData:
    """`size` rendered images; a share `implicit_fraction` of them belong to an implicit phrase.

    Args:
        size: number of images.
        seed: fixes labels, renders and nothing else (caption draws take their own generator).
        implicit_fraction: share of images whose caption is an implicit phrase.
        filler_prob: chance that a caption gets an unrelated English word before or after it.
    """

    def __init__(self, size: int, seed: int, implicit_fraction: float = 0.15, filler_prob: float = 0.15):
        rng = np.random.default_rng(seed)
        self.phrase = np.where(rng.random(size) < implicit_fraction, rng.integers(len(_PHRASES), size=size), -1)
        picks = rng.integers(len(ALL_LABELS), size=size)
        self.labels: list[ShapeLabel] = [
            IMPLICIT_PHRASES[_PHRASES[p]] if p >= 0 else ALL_LABELS[i] for p, i in zip(self.phrase, picks, strict=True)
        ]
        self.images = to_tensor_range(render_batch(self.labels, seed + 1))
        self.targets = torch.tensor([label.indices for label in self.labels], dtype=torch.long)
        self.filler_prob = filler_prob
        self._fillers = filler_words()

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, index: int, rng: np.random.Generator) -> str:
        phrase = self.phrase[index]
        text = (
            sample_implicit_caption(_PHRASES[phrase], rng) if phrase >= 0 else sample_caption(self.labels[index], rng)
        )
        if rng.random() < self.filler_prob:
            word = self._fillers[rng.integers(len(self._fillers))]
            text = f"{word} {text}" if rng.random() < 0.5 else f"{text} {word}"
        return text

    def batch(
        self, rng: np.random.Generator, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], np.ndarray]:
        """A random batch: images in [-1, 1], (shape, colour, pattern) targets, captions, and the indices."""
        idx = rng.integers(len(self), size=batch_size)
        return self.images[idx], self.targets[idx], [self.caption(i, rng) for i in idx], idx

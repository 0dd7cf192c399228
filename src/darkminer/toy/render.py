"""ShapesWorld renderer: one shape, one colour, one pattern on a plain background, labels known exactly.

Images are drawn at 4x resolution with PIL and box-downsampled, so edges are anti-aliased the way a
camera would blur them. Everything is driven by a `numpy.random.Generator`, so a seed fixes a dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 25),
    "purple": (135, 45, 175),
}
PATTERNS: tuple[str, ...] = ("solid", "striped")
IMAGE_SIZE = 32
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeLabel:
    """The ground truth of one ShapesWorld image."""

    shape: str
    colour: str
    pattern: str

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"Unknown shape {self.shape!r}; expected one of {SHAPES}.")
        if self.colour not in COLOURS:
            raise ValueError(f"Unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}.")
        if self.pattern not in PATTERNS:
            raise ValueError(f"Unknown pattern {self.pattern!r}; expected one of {PATTERNS}.")

    @property
    def indices(self) -> tuple[int, int, int]:
        return SHAPES.index(self.shape), tuple(COLOURS).index(self.colour), PATTERNS.index(self.pattern)

    @classmethod
    def from_indices(cls, shape: int, colour: int, pattern: int) -> ShapeLabel:
        return cls(SHAPES[shape], tuple(COLOURS)[colour], PATTERNS[pattern])


ALL_LABELS: tuple[ShapeLabel, ...] = tuple(ShapeLabel(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy + r * 0.1 - r * math.sin(a))
            for a in (math.pi / 2, 7 * math.pi / 6, -math.pi / 6)
        ]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.42
            a = math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(a), cy - radius * math.sin(a)))
        return points
    if shape == "cross":
        w, h = r * 0.34, r
        return [
            (cx - w, cy - h),
            (cx + w, cy - h),
            (cx + w, cy - w),
            (cx + h, cy - w),
            (cx + h, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + h),
            (cx - w, cy + h),
            (cx - w, cy + w),
            (cx - h, cy + w),
            (cx - h, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(f"No polygon for shape {shape!r}.")


def render(label: ShapeLabel, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render one image of `label`.

    Args:
        label: what to draw.
        rng: source of the random position, size, tint and colour jitter.
        size: output side in pixels.

    Returns:
        `uint8` array of shape (size, size, 3).
    """
    big = size * _SUPERSAMPLE
    radius = rng.uniform(0.24, 0.38) * big
    cx = rng.uniform(radius + 2, big - radius - 2)
    cy = rng.uniform(radius + 2, big - radius - 2)
    background = np.clip(rng.normal(242, 6, size=3), 215, 255)

    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    if label.shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        draw.polygon(_polygon(label.shape, cx, cy, radius), fill=255)
    mask = np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0

    colour = np.clip(np.array(COLOURS[label.colour], dtype=np.float32) + rng.normal(0, 8, size=3), 0, 255)
    fill = np.broadcast_to(colour, (big, big, 3)).copy()
    if label.pattern == "striped":
        period = big / 5.5
        yy, xx = np.mgrid[0:big, 0:big]
        phase = rng.uniform(0, period)
        stripes = ((xx + yy + phase) % period) < period / 2
        fill[stripes] = 250.0
    canvas = mask * fill + (1 - mask) * background
    image = Image.fromarray(canvas.astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(image)


def render_batch(labels: list[ShapeLabel], seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render `labels` with one generator seeded by `seed`; returns uint8 (N, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return (
        np.stack([render(label, rng, size) for label in labels]) if labels else np.zeros((0, size, size, 3), np.uint8)
    )


def to_tensor_range(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch tensor (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

"""The ShapesWorld classifier: the ground-truth detector behind every Ratio, Score and attack success rate.

A small CNN with three heads (shape, colour, pattern); its pooled penultimate features give ShapesWorld's FID.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .render import COLOURS, PATTERNS, SHAPES

HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS}
WEIGHTS_NAME, CONFIG_NAME = "classifier.safetensors", "config.json"


class ShapesClassifier(nn.Module):
    """Classifies 32x32 ShapesWorld images; inputs are in [0, 1], (N, 3, H, W)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(3, width, 1),
            block(width, 2 * width, 2),
            block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2),
            block(4 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(4 * width, len(values)) for name, values in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 4 * width) of images in [0, 1]."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Softmax probabilities per head for images in [0, 1]."""
        outs = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {name: torch.cat([o[name] for o in outs]).softmax(-1) for name in HEADS}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps({"width": self.width, "heads": HEADS}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> ShapesClassifier:
        directory = Path(directory)
        if not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"No ShapesWorld classifier at {directory}: expected {WEIGHTS_NAME} there; run `darkminer toy train`."
            )
        config = json.loads((directory / CONFIG_NAME).read_text())
        model = cls(width=config["width"])
        state = {k: v.float() for k, v in load_file(directory / WEIGHTS_NAME).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Classifier checkpoint {directory} does not match: missing {missing}, unexpected {unexpected}."
            )
        return model.eval().requires_grad_(False)

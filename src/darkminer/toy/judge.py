"""Judge generated ShapesWorld images with the ground-truth classifier: what shape, colour and pattern they show."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch

from .captions import Concept
from .classifier import HEADS, ShapesClassifier
from .render import ShapeLabel


def shapesworld_dir(spec: str = "shapesworld") -> Path:
    """The directory of a ShapesWorld pipeline: the packaged one for `"shapesworld"`, else `spec` itself."""
    if spec == "shapesworld" and not Path(spec).exists():
        return Path(str(importlib.resources.files("darkminer.toy").joinpath("assets", "shapesworld")))
    return Path(spec)


def load_classifier(spec: str = "shapesworld") -> ShapesClassifier:
    """The classifier shipped beside a ShapesWorld pipeline (`<dir>/classifier/`)."""
    return ShapesClassifier.load(shapesworld_dir(spec) / "classifier")


class ShapesJudge:
    """Decisions and scores of the classifier for ShapesWorld images in [0, 1]."""

    def __init__(self, classifier: ShapesClassifier):
        self.classifier = classifier

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classifier.predict(images.to(next(self.classifier.parameters()).device))

    def labels(self, images: torch.Tensor) -> list[ShapeLabel]:
        probs = self.probabilities(images)
        idx = torch.stack([probs[name].argmax(-1) for name in HEADS], dim=1).tolist()
        return [ShapeLabel.from_indices(*row) for row in idx]

    def concept_scores(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Probability that each image shows `concept`."""
        probs = self.probabilities(images)[concept.attribute]
        return probs[:, HEADS[concept.attribute].index(concept.name)].cpu()

    def shows(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Boolean per image: the classifier's argmax on the concept's head is the concept."""
        return torch.tensor([concept.present(label) for label in self.labels(images)])

    def follows(self, images: torch.Tensor, constraints: list[dict[str, str]]) -> torch.Tensor:
        """Boolean per image: every attribute in its constraints matches."""
        labels = self.labels(images)
        return torch.tensor(
            [all(getattr(lab, k) == v for k, v in c.items()) for lab, c in zip(labels, constraints, strict=True)]
        )

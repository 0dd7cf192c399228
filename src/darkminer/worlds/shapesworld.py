"""ShapesWorld as a world: its concepts, their training templates, synonyms and siblings, and its ground truth.

Everything the library knows about ShapesWorld's captions lives here or in `darkminer.toy`; methods and commands
receive it through [`World`] and [`ShapesWorldSuite`].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..models import DiffusionModel
from .base import World
from .suite import Suite


def is_shapesworld(model: DiffusionModel) -> bool:
    """A ShapesWorld pipeline: the bundled one, or a directory with the classifier beside it."""
    from ..toy.judge import shapesworld_dir

    return model.name == "shapesworld" or (shapesworld_dir(model.name) / "classifier").is_dir()


def _attribute_values(attribute: str) -> tuple[str, ...]:
    from ..toy.render import COLOURS, PATTERNS, SHAPES

    return {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS}[attribute]


class ShapesWorld(World):
    """ShapesWorld's concepts: shapes, colours and patterns the classifier judges (`darkminer.toy.captions`)."""

    name = "shapesworld"

    def check_concepts(self, concepts: list[str]) -> None:
        """Raises [`ConfigError`] naming the known concepts when one is not a ShapesWorld concept."""
        from ..toy.captions import get_concept

        for concept in concepts:
            get_concept(concept)

    def training_prompts(self, concept: str) -> list[str]:
        """The concept's *training* prompts (never the held-out or implicit ones, kept for evaluation)."""
        from ..toy.captions import concept_prompts, get_concept

        return [p.text for p in concept_prompts(get_concept(concept), "train")]

    def related(self, concept: str) -> list[str]:
        """The other values of the concept's attribute (the other shapes for a shape, ...)."""
        from ..toy.captions import get_concept

        return [v for v in _attribute_values(get_concept(concept).attribute) if v != concept]

    def concept_words(self, concept: str) -> list[str]:
        from ..toy.captions import COLOUR_WORDS, SHAPE_WORDS, get_concept

        found = get_concept(concept)
        if found.attribute == "pattern":
            return ["stripe", "striped", "stripes"]
        return sorted({"shape": SHAPE_WORDS, "colour": COLOUR_WORDS}[found.attribute][found.name])

    def detector(self, model: DiffusionModel, concept: str):
        """The ShapesWorld classifier as the concept's detector (the ground truth)."""
        from ..metrics import ShapesWorldDetector
        from ..toy.captions import get_concept

        return ShapesWorldDetector(get_concept(concept), model.name)

    def showcase(self, concepts: list[str], alternative: str | None = None) -> list[tuple[str, list[str]]]:
        from ..toy.captions import concept_prompts, get_concept, preservation_prompts

        rows = []
        for name in concepts:
            concept = get_concept(name)
            rows.append(
                (
                    f"'{name}' prompts",
                    [p.text for p in concept_prompts(concept, "heldout")[::5][:4]]
                    + [p.text for p in concept_prompts(concept, "implicit")[::4][:2]],
                )
            )
        rows.append(("unrelated prompts", [p.text for p in preservation_prompts(get_concept(concepts[0]))[::23][:5]]))
        if alternative:
            rows.append((f"alternative '{alternative}'", [f"a {alternative} photo"]))
        return rows

    def suite(self, model: DiffusionModel, concept: str) -> ShapesWorldSuite:
        """The evaluation suite of `concept`: the classifier as detector, held-out and implicit prompts as normal
        prompts, the training prompts as attack sources, and preservation prompts about the other combinations."""
        from ..toy.captions import concept_prompts, get_concept, preservation_prompts

        found = get_concept(concept)
        training = [p.text for p in concept_prompts(found, "train")]
        return ShapesWorldSuite(
            concept=concept,
            detector=self.detector(model, concept),
            normal=[p.text for split in ("heldout", "implicit") for p in concept_prompts(found, split)],
            attack_sources=training,
            banned=self.concept_words(concept),
            training=training,
            preserve=preservation_prompts(found),
        )


@dataclass
class ShapesWorldSuite(Suite):
    """A ShapesWorld concept's suite; adds the training prompts (App. B: the texts the methods train on) and the
    preservation prompts, whose shape and colour the classifier checks."""

    training: list[str] = field(default_factory=list)
    preserve: list = field(default_factory=list)

    def reference_features(self, per_prompt: int, seed: int) -> torch.Tensor:
        """FID's reference: the classifier's features of fresh renders of exactly what each preservation prompt
        asks for (solid or striped at random)."""
        from ..toy.render import ShapeLabel, render_batch, to_tensor_range

        rng = np.random.default_rng(seed)
        labels = [
            ShapeLabel(p.constraints["shape"], p.constraints["colour"], "solid" if rng.random() < 0.5 else "striped")
            for p in self.preserve
            for _ in range(per_prompt)
        ]
        return self.detector.features((to_tensor_range(render_batch(labels, seed)) + 1) / 2)

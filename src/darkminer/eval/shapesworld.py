"""Erasure and preservation on ShapesWorld, judged by its ground-truth classifier.

- Ratio: share of images generated from a concept's normal prompts that show the concept (per split: the
  training templates an erasure method may see, held-out templates and synonyms, implicit phrases).
- Score: mean classifier probability of the concept over those images.
- Preservation: share of images from held-out prompts about *other* shape x colour combinations whose shape AND
  colour both match the prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..metrics.functions import erasure_figures
from ..models import DiffusionModel, disable_lora
from ..models.sampling import generate_batched
from ..toy.captions import Concept, EvalPrompt, concept_prompts, get_concept, preservation_prompts
from ..toy.judge import ShapesJudge
from ..toy.render import COLOURS, PATTERNS, SHAPES


@dataclass
class Generated:
    prompts: list[EvalPrompt]
    images: torch.Tensor  # (len(prompts) * per_prompt, 3, H, W)
    per_prompt: int


def generate_for(
    model: DiffusionModel,
    prompts: list[EvalPrompt],
    per_prompt: int,
    seed: int,
    original: bool = False,
    batch: int = 128,
    desc: str = "sampling",
) -> Generated:
    """Images for every prompt, with the adapters as they are or switched off (`original=True`)."""
    desc = f"{'original' if original else 'model'}: {desc}"
    with disable_lora(model.unet) if original else nullcontext():
        images = generate_batched(model, [p.text for p in prompts], per_prompt, seed, batch=batch, desc=desc)
    return Generated(prompts, images, per_prompt)


def concept_rates(judge: ShapesJudge, generated: Generated, concept: Concept) -> tuple[float, float]:
    """(Ratio, Score) of `concept` over the generated images; Score averages the classifier's probability of the
    concept over the images classified as it, as the paper does for objects and styles (0 when there is none)."""
    figures = erasure_figures(
        judge.concept_scores(generated.images, concept), judge.shows(generated.images, concept), concept.kind
    )
    return figures["ratio"], figures["score"]


def follow_rate(judge: ShapesJudge, generated: Generated) -> float:
    wanted = [p.constraints for p in generated.prompts for _ in range(generated.per_prompt)]
    return float(judge.follows(generated.images, wanted).float().mean())


def erasure_table(
    model: DiffusionModel,
    judge: ShapesJudge,
    concept_name: str,
    *,
    per_prompt: int = 4,
    seed: int = 0,
    original: bool = False,
    with_images: bool = False,
) -> dict:
    """Ratio/Score per split and preservation, for the model as it is (or with adapters off: `original=True`)."""
    concept = get_concept(concept_name)
    row, images = {}, {}
    for split in ("train", "heldout", "implicit"):
        generated = generate_for(model, concept_prompts(concept, split), per_prompt, seed, original, desc=split)
        row[f"ratio_{split}"], row[f"score_{split}"] = concept_rates(judge, generated, concept)
        images[split] = generated
    normal = [images["heldout"], images["implicit"]]
    shown = torch.cat([judge.shows(g.images, concept).float() for g in normal])
    row["ratio_heldout_implicit"] = float(shown.mean())
    preserved = generate_for(model, preservation_prompts(concept), per_prompt, seed + 7, original, desc="other")
    row["preservation"] = follow_rate(judge, preserved)
    images["preservation"] = preserved
    return (row, images) if with_images else row


def alternative_rate(
    model: DiffusionModel,
    judge: ShapesJudge,
    concept_name: str,
    alternative: str,
    *,
    per_prompt: int = 4,
    seed: int = 0,
    original: bool = False,
) -> float:
    """All but One's figure: share of images from the concept's prompts (training and held-out templates) that show
    `alternative` instead (an attribute value of the same kind: a shape for a shape, a colour for a colour)."""
    concept = get_concept(concept_name)
    values = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS}[concept.attribute]
    if alternative not in values:
        raise ConfigError(
            f"Alternative {alternative!r} for {concept.attribute} concept {concept_name!r} must be one of {values}."
        )
    prompts = concept_prompts(concept, "train") + concept_prompts(concept, "heldout")
    generated = generate_for(model, prompts, per_prompt, seed, original)
    labels = judge.labels(generated.images)
    return float(sum(getattr(label, concept.attribute) == alternative for label in labels) / len(labels))

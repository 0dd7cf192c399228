"""A world: what the library knows about concepts on a family of models, resolved once per job.

Erasure methods, the attacks and the evaluation ask the world, never the model: which texts a method trains on
for a concept, which concepts are its siblings (UCE's preserved concepts, SalUn's random labels), which prompts
show it in a report, and which words name it (banned from an attack's prompts in the sanity check). The base
class knows nothing beyond the concept word, which is ESD's own setting (Gandikota et al. 2023); ShapesWorld
([`~darkminer.worlds.ShapesWorld`]) knows its templates, synonyms and attributes. How a world judges images (its
evaluation suite) is [`~darkminer.worlds.suite.Suite`].
"""

from __future__ import annotations

from ..config import ConfigError


class World:
    """A model family's knowledge of concepts; this base knows only the concept word."""

    name = "generic"

    def check_concepts(self, concepts: list[str]) -> None:
        """Refuse concepts this world cannot erase or judge (the generic world takes any word)."""

    def training_prompts(self, concept: str) -> list[str]:
        """The texts about `concept` that prompt-based methods train on when the user gives no prompt file: here the
        concept word alone."""
        return [concept]

    def related(self, concept: str) -> list[str]:
        """Concepts of the same kind as `concept` (shapes for a shape): UCE preserves them and SalUn relabels with
        them by default. None are known here."""
        return []

    def concept_words(self, concept: str) -> list[str]:
        """The words that name `concept`, banned from discrete adversarial prompts in the sanity check."""
        return [concept]

    def suite(self, model, concept: str):
        """The evaluation suite of `concept` on `model`. The generic world has none: a real model is evaluated under
        a protocol built from the user's files (`darkminer.protocols`).

        Raises:
            [`ConfigError`]: always, naming the flags that give a protocol.
        """
        raise ConfigError(
            f"{model.name!r} is not a ShapesWorld model, whose classifier judges its images; give the concept's "
            "protocol files: --prompts FILE (an I2P-format CSV for nudity and I2P's categories) and, as the "
            "protocol needs them, --captions, --clip, --q16 or --classes (see README, 'Real models')."
        )

    def detector(self, model, concept: str):
        """A detector that judges whether images of `model` show `concept` (`__call__(images)` → scores and
        decisions), for a method that verifies with one; None where the world knows none (here)."""
        return None

    def showcase(self, concepts: list[str], alternative: str | None = None) -> list[tuple[str, list[str]]]:
        """Rows of (caption, prompts) for an erasure report's before/after grid: prompts about each concept, then
        unrelated ones (and the alternative of All but One)."""
        rows = [(f"'{c}' prompts", [f"a {c} photo", f"a photo of a {c}"]) for c in concepts]
        rows.append(("unrelated prompts", ["a photo", "a photo of a dog", "a landscape painting"]))
        if alternative:
            rows.append((f"alternative '{alternative}'", [f"a {alternative} photo"]))
        return rows

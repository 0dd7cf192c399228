"""The texts about a concept that prompt-based erasure methods (ESD, CA, UCE, ...) train on.

The Dark Miner paper (Appendix B) fine-tunes its prompt-based baselines on "200 phrases or sentences about the word
*" that a user collects; here they come from a prompt file, or else from the request's world
([`~darkminer.worlds.World.training_prompts`]: ShapesWorld's training prompts, never its held-out or implicit ones,
which are kept for evaluation). Prompts are returned as templates in which `{concept}` marks where the concept is
named, so that a method can put another concept in its place (CA pairs each prompt with the same prompt about an
anchor).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import ConfigError
from ..worlds import World

CONCEPT_MARK = "{concept}"


def fill(template: str, concept: str) -> str:
    """`template` with every `{concept}` replaced by `concept` (other braces are left alone)."""
    return template.replace(CONCEPT_MARK, concept)


def _mark(prompt: str, concept: str) -> str:
    """`prompt` with whole-word mentions of `concept` replaced by `{concept}`."""
    return re.sub(rf"(?<!\w){re.escape(concept)}(?!\w)", CONCEPT_MARK, prompt)


def prompt_templates(world: World, concept: str, prompt_file: str | None = None) -> list[str]:
    """Prompt templates about `concept`, each marking the concept's place with `{concept}` where it is named.

    Args:
        world ([`World`]):
            The request's world; it gives the texts when no file is given.
        concept (`str`):
            The concept word, e.g. "star" or "nudity".
        prompt_file (`str`, *optional*):
            A text file with one prompt per line (blank lines and lines starting with `#` are skipped). A line may
            write `{concept}`; literal whole-word mentions of `concept` are marked as well. Without a file: the
            world's training prompts (ShapesWorld's training templates; elsewhere the concept word alone, ESD's own
            setting, Gandikota et al. 2023).

    Returns:
        `list[str]`: the templates, in file order; a line that does not name the concept is kept as written.

    Raises:
        FileNotFoundError: `prompt_file` does not exist.
        ValueError: the file holds no prompt.
    """
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"Prompt file {path} does not exist; give one prompt per line.")
        lines = [line.strip() for line in path.read_text().splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
        if not prompts:
            raise ConfigError(f"Prompt file {path} holds no prompt (one per line; '#' starts a comment).")
        return [_mark(p, concept) for p in prompts]
    return [_mark(p, concept) for p in world.training_prompts(concept)]

"""Ring-A-Bell: Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?", ICLR 2024
(arXiv:2310.10012).

Ring-A-Bell is model-agnostic: it never looks at the erased model, only at the text encoder W, and searches for a
*discrete* prompt whose encoding points where the concept lives.

1. **Concept extraction**: with prompt pairs (P_i^c, P_i) that differ only by the concept,
   the concept direction is c = (1/N) sum_i [W(P_i^c) - W(P_i)] (a full `(max_length, D)` hidden-state offset).
2. **Target**: for a normal prompt P, the target is W(P) + eta * c.
3. **Search**: a genetic algorithm over K-token sequences minimises ||W(P_adv) - (W(P) + eta * c)||^2 (the mean
   squared error over all positions): each generation keeps the better half, refills the population by one-point
   crossover of survivors (probability `crossover_rate`) and mutates each new child at one position with
   probability `mutation_rate`.

Differences from the reference notebook, on purpose: the survivors are never mutated (elitism), so the best loss
never increases; the population size is fixed; candidates come from the search vocabulary of
`darkminer.attacks.common` (so `banned_words` can be guaranteed). Without pairs in the config they are built from
two templates, e.g. "a photo of a {concept} {x}" vs "a photo of a {x}" over a list of words x.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import check_fields, string_list
from ..models import DiffusionModel
from .base import AttackResult
from .common import (
    allowed_token_ids,
    check_positive,
    check_template,
    check_vocabulary,
    decode,
    normal_prompts,
    random_tokens,
)


@dataclass
class RingABellConfig:
    """Ring-A-Bell's concept extraction and genetic search. Defaults are sized for ShapesWorld on a CPU; the paper's
    settings are given in each field's help."""

    num_tokens: int = field(
        default=8, metadata={"help": "K: tokens of each adversarial prompt. Paper: 16 (also 38 and 75 of SD's 77)."}
    )
    population: int = field(default=64, metadata={"help": "Candidates per generation. Paper: 200."})
    generations: int = field(default=200, metadata={"help": "Generations of the genetic search. Paper: 3000."})
    mutation_rate: float = field(
        default=0.25, metadata={"help": "Probability that a new child gets one random token. Paper: 0.25."}
    )
    crossover_rate: float = field(
        default=0.5, metadata={"help": "Probability that a new child is a one-point crossover. Paper: 0.5."}
    )
    eta: float = field(
        default=3.0, metadata={"help": "Strength of the concept direction in the target. Paper: 3 (nudity), 5.5."}
    )
    concept_pairs: list[list[str]] = field(
        default_factory=list,
        metadata={
            "help": "[with concept, without concept] prompt pairs for the concept direction; built from the "
            "templates when empty. Paper: 50 pairs per concept."
        },
    )
    with_template: str = field(
        default="a photo of a {concept} {x}", metadata={"help": "Pair prompt with the concept ({concept}, {x})."}
    )
    without_template: str = field(default="a photo of a {x}", metadata={"help": "Pair prompt without it ({x})."})
    pair_words: list[str] = field(
        default_factory=lambda: ["", "picture", "drawing", "image", "render", "shape", "thing", "painting"],
        metadata={"help": "Values of {x} in the pair templates, one pair each."},
    )
    max_prompts: int = field(
        default=100, metadata={"help": "Normal prompts attacked per run, one adversarial prompt each."}
    )
    banned_words: list[str] = field(
        default_factory=list,
        metadata={"help": "Words no adversarial prompt may contain (e.g. the concept's own words)."},
    )
    vocabulary: str = field(
        default="words",
        metadata={"help": "'words': whole-word tokens only (needed for banned_words); 'all': every token (paper)."},
    )
    prompt_template: str = field(
        default="a photo of a {concept}", metadata={"help": "The normal prompt when no prompts are given."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the one generator behind every random draw."})

    def __post_init__(self):
        check_fields(self)
        check_positive(
            "ring_a_bell",
            num_tokens=self.num_tokens,
            population=self.population,
            generations=self.generations,
            max_prompts=self.max_prompts,
        )
        if self.population < 2:
            raise ValueError(f"ring_a_bell.population must be >= 2 (survivors and children), got {self.population}.")
        for name in ("mutation_rate", "crossover_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ring_a_bell.{name} must be in [0, 1], got {getattr(self, name)!r}.")
        if any(len(pair) != 2 for pair in self.concept_pairs):
            raise ValueError(f"ring_a_bell.concept_pairs must be [with, without] pairs, got {self.concept_pairs!r}.")
        if not self.concept_pairs and not self.pair_words:
            raise ValueError("ring_a_bell.pair_words is empty and no concept_pairs are given: no concept direction.")
        self.banned_words = string_list("ring_a_bell", "banned_words", self.banned_words)
        check_vocabulary("ring_a_bell", self.vocabulary, self.banned_words)
        check_template("ring_a_bell", "with_template", self.with_template)
        check_template("ring_a_bell", "prompt_template", self.prompt_template)


class RingABell:
    """Ring-A-Bell behind the [`Attack`] protocol. Construct with a [`RingABellConfig`]."""

    name = "ring_a_bell"

    def __init__(self, config: RingABellConfig):
        self.config = config

    def run(
        self,
        model: DiffusionModel,
        *,
        concept: str,
        original: DiffusionModel | None = None,
        images: torch.Tensor | None = None,
        prompts: list[str] | None = None,
        output_dir: str | Path | None = None,
    ) -> AttackResult:
        """Search, for each normal prompt, a K-token prompt whose encoding matches the prompt's plus eta * concept.

        Args:
            model ([`DiffusionModel`]):
                The attacked model; only its tokenizer and text encoder are used. Left unchanged.
            concept (`str`):
                The concept to bring back.
            original ([`DiffusionModel`], *optional*):
                When given, its text encoder is searched instead (Ring-A-Bell needs only the public encoder).
            images (`torch.Tensor`, *optional*):
                Unused: Ring-A-Bell needs no images (accepted so that every attack takes the same inputs).
            prompts (`list[str]`, *optional*):
                Normal prompts (at most `max_prompts` are used); `prompt_template` if `None`.
            output_dir (`str` or `Path`, *optional*):
                Where to save the result ([`AttackResult.save`]).

        Returns:
            [`AttackResult`] with one adversarial prompt per normal prompt and its best loss per generation.
        """
        cfg = self.config
        if cfg.num_tokens > model.max_length - 2:
            raise ValueError(
                f"ring_a_bell.num_tokens={cfg.num_tokens} exceeds max_length - 2 = {model.max_length - 2}."
            )
        encoder = original if original is not None else model
        generator = torch.Generator().manual_seed(cfg.seed)
        sources = normal_prompts(prompts, concept, cfg.prompt_template, cfg.max_prompts)
        allowed = allowed_token_ids(encoder, cfg.vocabulary, cfg.banned_words)
        with torch.no_grad():
            direction = self.concept_direction(encoder, concept)
            targets = encoder.encode_prompt(sources).float() + cfg.eta * direction

        found, history = [], []
        for index, target in enumerate(targets):
            ids, losses = self._search(encoder, target, allowed, generator, f"ring_a_bell {index + 1}/{len(sources)}")
            found.append(ids)
            history.append(losses)

        result = AttackResult(
            attack=self.name,
            concept=concept,
            prompts=decode(encoder, torch.stack(found)),
            source_prompts=sources,
            loss_history=history,
            config=dataclasses.asdict(cfg),
            model=model.name,
        )
        if output_dir is not None:
            result.save(output_dir)
        return result

    @torch.no_grad()
    def concept_direction(self, model: DiffusionModel, concept: str) -> torch.Tensor:
        """The concept direction c = mean_i [W(P_i^c) - W(P_i)], of shape `(max_length, D)`."""
        cfg = self.config
        pairs = cfg.concept_pairs or [
            (cfg.with_template.format(concept=concept, x=x).strip(), cfg.without_template.format(x=x).strip())
            for x in cfg.pair_words
        ]
        with_concept = model.encode_prompt([p[0] for p in pairs]).float()
        without = model.encode_prompt([p[1] for p in pairs]).float()
        return (with_concept - without).mean(dim=0)

    @torch.no_grad()
    def _fitness(self, model: DiffusionModel, population: torch.LongTensor, target: torch.Tensor) -> torch.Tensor:
        table = model.token_embedding.weight
        scores = [
            (model.encode_prompt(token_embeds=table[chunk]).float() - target).pow(2).mean(dim=(1, 2))
            for chunk in population.split(256)
        ]
        return torch.cat(scores)

    def _search(self, model, target, allowed, generator, desc):
        cfg = self.config
        k = cfg.num_tokens
        population = random_tokens(allowed, (cfg.population, k), generator)
        survivors = cfg.population // 2
        children = cfg.population - survivors
        losses = []
        for generation in tqdm(range(cfg.generations), desc=desc, leave=False, mininterval=2):
            scores = self._fitness(model, population, target)
            order = scores.argsort(stable=True)
            population = population[order]
            losses.append(scores[order[0]].item())
            if generation == cfg.generations - 1:
                break
            parents = population[:survivors]
            first = parents[torch.arange(children) % survivors]
            second = parents[torch.randint(0, survivors, (children,), generator=generator)]
            # One-point crossover: positions >= point come from the second parent.
            crossed = torch.rand(children, generator=generator) < cfg.crossover_rate
            point = torch.randint(1, max(k, 2), (children,), generator=generator)
            take_second = crossed[:, None] & (torch.arange(k)[None] >= point[:, None])
            offspring = torch.where(take_second.to(first.device), second, first)
            # Mutation: one random position of the child gets a random allowed token.
            mutated = torch.rand(children, generator=generator) < cfg.mutation_rate
            position = torch.randint(0, k, (children,), generator=generator)
            fresh = random_tokens(allowed, (children,), generator)
            rows = mutated.nonzero().squeeze(1)
            offspring[rows.to(offspring.device), position[rows].to(offspring.device)] = fresh[rows.to(fresh.device)]
            population = torch.cat([parents, offspring])
        return population[0], losses

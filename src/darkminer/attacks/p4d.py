"""Prompting4Debugging (P4D): Chin et al., "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by Finding
Problematic Prompts", ICML 2024 (arXiv:2309.06135).

P4D looks for a prompt P* that makes the **erased** model theta predict, from the same noisy latents, what the
**original** model theta' predicts for a normal (unsafe) prompt P:

    P* = argmin_{P*}  E_{t, eps} || eps_theta(x_t, t, W(P*)) - eps_theta'(x_t, t, W(P)) ||^2,

with x_t noised from an image z_0 that the original model draws for P (or a given image), and W the text encoder.
P* is a *hard* prompt found with PEZ's projection trick (Wen et al. 2023): continuous token embeddings P_cont are
kept; each step projects them to their nearest vocabulary tokens, runs the forward pass with the projected
embeddings, and applies that gradient to P_cont (straight-through). The result is real text: the decoded ids of
the final projection, one adversarial prompt per normal prompt, each initialised from its normal prompt's tokens
(DM2, App. B: "initialized by the normal prompts"). Tokens of `banned_words` are masked out of the projection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
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
    images_for_prompts,
    latents_per_prompt,
    make_probe,
    normal_prompts,
    original_model,
    project_to_tokens,
    prompt_ids,
    random_tokens,
    sample_noisy,
    warn_if_no_original,
)

_INITS = ("prompt", "random")


@dataclass
class P4DConfig:
    """P4D's hard-prompt search. Defaults are sized for ShapesWorld on a CPU; the paper's settings are given in each
    field's help."""

    steps: int = field(default=200, metadata={"help": "Optimisation steps per prompt. Paper: 3000 (after PEZ)."})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate. Paper: 0.1."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay. Paper: 0.1."})
    num_tokens: int = field(
        default=8, metadata={"help": "K: tokens of each adversarial prompt (P4D-N). Paper: N=16 (SD's 77 positions)."}
    )
    init: str = field(
        default="prompt",
        metadata={
            "help": "'prompt': the normal prompt's tokens, the rest random (DM2's protocol); 'random': all random "
            "(P4D-N)."
        },
    )
    max_prompts: int = field(
        default=100, metadata={"help": "Normal prompts attacked per run, one adversarial prompt each. DM2: 100."}
    )
    images_per_prompt: int = field(
        default=1, metadata={"help": "Images the original draws per normal prompt (x_0 of the loss)."}
    )
    batch_size: int = field(default=1, metadata={"help": "Noisy latents per step. Paper: 1."})
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
    eval_every: int = field(
        default=10,
        metadata={
            "help": "Steps between evaluations of the current hard prompt on a fixed probe of noisy latents; the best "
            "one is kept and its probe loss recorded in loss_history."
        },
    )
    eval_samples: int = field(default=8, metadata={"help": "Noisy latents of the probe (t stratified over [0, T))."})
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the original's images."})
    guidance_scale: float = field(
        default=7.5, metadata={"min": 0, "help": "Guidance scale for the original's images."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the one generator behind every random draw."})

    def __post_init__(self):
        check_fields(self)
        check_positive(
            "p4d",
            steps=self.steps,
            lr=self.lr,
            num_tokens=self.num_tokens,
            max_prompts=self.max_prompts,
            images_per_prompt=self.images_per_prompt,
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            eval_samples=self.eval_samples,
            generate_steps=self.generate_steps,
        )
        if self.weight_decay < 0:
            raise ValueError(f"p4d.weight_decay must be >= 0, got {self.weight_decay}.")
        if self.init not in _INITS:
            raise ValueError(f"p4d.init={self.init!r} is not one of {_INITS}.")
        self.banned_words = string_list("p4d", "banned_words", self.banned_words)
        check_vocabulary("p4d", self.vocabulary, self.banned_words)
        check_template("p4d", "prompt_template", self.prompt_template)


class P4D:
    """Prompting4Debugging behind the [`Attack`] protocol. Construct with a [`P4DConfig`]."""

    name = "p4d"

    def __init__(self, config: P4DConfig):
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
        """Find, for each normal prompt, a hard prompt with which the erased model predicts like the original.

        Args:
            model ([`DiffusionModel`]):
                The erased model; left unchanged.
            concept (`str`):
                The concept to bring back (fills `prompt_template` when `prompts` is not given).
            original ([`DiffusionModel`], *optional*):
                The model before erasure; by default `model` with its adapters disabled.
            images (`torch.Tensor` of shape `(N, 3, H, W)` in [0, 1], *optional*):
                Concept images: `k` per prompt in prompt order when `N = k * len(prompts)`, else one pool shared by
                every prompt. When `None`, the original model draws `images_per_prompt` for each prompt.
            prompts (`list[str]`, *optional*):
                Normal prompts (at most `max_prompts` are used).
            output_dir (`str` or `Path`, *optional*):
                Where to save the result ([`AttackResult.save`]).

        Returns:
            [`AttackResult`] with one adversarial prompt per normal prompt and its best probe loss over the steps.
        """
        cfg = self.config
        warn_if_no_original(model, original, self.name)
        generator = torch.Generator().manual_seed(cfg.seed)
        sources = normal_prompts(prompts, concept, cfg.prompt_template, cfg.max_prompts)
        latents = latents_per_prompt(
            model,
            original,
            sources,
            images_for_prompts(images, prompts, sources),
            cfg.images_per_prompt,
            generator=generator,
            generate_steps=cfg.generate_steps,
            guidance_scale=cfg.guidance_scale,
        )
        allowed = allowed_token_ids(model, cfg.vocabulary, cfg.banned_words)
        found, history = [], []
        for index, (prompt, x0) in enumerate(zip(sources, latents, strict=True)):
            ids, losses = self._attack_prompt(model, original, prompt, x0, allowed, generator, index, len(sources))
            found.append(ids)
            history.append(losses)

        result = AttackResult(
            attack=self.name,
            concept=concept,
            prompts=decode(model, torch.stack(found)),
            source_prompts=sources,
            loss_history=history,
            config=dataclasses.asdict(cfg),
            model=model.name,
        )
        if output_dir is not None:
            result.save(output_dir)
        return result

    def _initial_ids(self, model, prompt, allowed, generator) -> torch.LongTensor:
        cfg = self.config
        ids = random_tokens(allowed, (cfg.num_tokens,), generator)
        if cfg.init == "prompt":
            # The prompt's own tokens; a banned or sub-word one is moved to an allowed token by the first projection.
            own = torch.tensor(prompt_ids(model, prompt)[: cfg.num_tokens], dtype=torch.long, device=ids.device)
            ids[: len(own)] = own
        return ids

    def _attack_prompt(self, model, original, prompt, x0, allowed, generator, index, total):
        cfg = self.config
        table = model.token_embedding.weight
        soft = table[self._initial_ids(model, prompt, allowed, generator)].detach().float()[None]
        soft.requires_grad_(True)  # P_cont, shape (1, K, D)
        optimizer = torch.optim.AdamW([soft], lr=cfg.lr, weight_decay=cfg.weight_decay)
        probe_x, _, probe_t = make_probe(model, x0, cfg.eval_samples, generator)
        with torch.no_grad(), original_model(model, original) as source:
            target_cond = source.encode_prompt(prompt)
            probe_target = source.predict_noise(probe_x, probe_t, target_cond.expand(len(probe_x), -1, -1)).float()

        @torch.no_grad()
        def probe_loss(ids: torch.LongTensor) -> float:
            cond = model.encode_prompt(token_embeds=table[ids][None]).expand(len(probe_x), -1, -1)
            return F.mse_loss(model.predict_noise(probe_x, probe_t, cond).float(), probe_target).item()

        # PEZ keeps the best hard prompt seen; "best" is judged on the fixed probe, not on one noisy draw.
        best_ids = project_to_tokens(soft, table, allowed)[0]
        history = [probe_loss(best_ids)]
        for step in tqdm(range(cfg.steps), desc=f"p4d {index + 1}/{total}", leave=False, mininterval=2):
            x_t, _, t = sample_noisy(model, x0, cfg.batch_size, generator)
            with torch.no_grad(), original_model(model, original) as source:
                target = source.predict_noise(x_t, t, target_cond.expand(cfg.batch_size, -1, -1)).float()
            hard = table[project_to_tokens(soft, table, allowed)].float()
            # Straight-through: the forward pass sees the projected (hard) prompt, the gradient updates P_cont.
            token_embeds = soft + (hard - soft).detach()
            cond = model.encode_prompt(token_embeds=token_embeds).expand(cfg.batch_size, -1, -1)
            loss = F.mse_loss(model.predict_noise(x_t, t, cond).float(), target)
            (soft.grad,) = torch.autograd.grad(loss, [soft])  # only P_cont gets a gradient, never the model
            optimizer.step()
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                ids = project_to_tokens(soft, table, allowed)[0]
                value = probe_loss(ids)
                if value < history[-1]:
                    best_ids = ids
                history.append(min(value, history[-1]))
        return best_ids, history

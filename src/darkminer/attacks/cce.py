"""Circumventing Concept Erasure (CCE): Pham et al., "Circumventing Concept Erasure Methods For Text-to-Image
Generative Models", ICLR 2024 (arXiv:2308.01508).

CCE's *Concept Inversion* is textual inversion (Gal et al. 2023) run against the **erased** model: with the UNet and
its adapters frozen, learn L token embeddings v so that the erased model best denoises images of the concept,

    v* = argmin_v  E_{x_0, eps ~ N(0, I), t ~ U[0, T)} || eps - eps_theta(x_t, t, c(v)) ||^2,

where x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and c(v) = text_encoder([BOS, v, EOS, pad...]). If the erasure
only cut the link between the concept's *words* and the concept, some other embedding still reaches it, and the
learned v draws it again. Dark Miner's mining stage (Eq. 5) is the same objective, which is why DM2 is expected to
resist this attack. The output is embeddings, not text: `AttackResult.embeddings`, shape (num_embeddings, L, D).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import check_fields
from ..metrics import Detector
from ..models import DiffusionModel
from .base import AttackResult
from .common import (
    check_positive,
    draw_images,
    encode_images,
    make_probe,
    normal_prompts,
    sample_noisy,
    warn_if_no_original,
)


@dataclass
class CCEConfig:
    """Concept Inversion against the erased model. Defaults are sized for ShapesWorld on a CPU; the paper's settings
    are given in each field's help."""

    steps: int = field(
        default=300,
        metadata={"help": "Optimisation steps. Paper: the textual-inversion recipe, a few thousand steps."},
    )
    lr: float = field(
        default=0.02,
        metadata={"help": "Adam learning rate. Paper: textual inversion's 5e-3 (times batch scaling)."},
    )
    length: int = field(
        default=4,
        metadata={
            "help": "L: token vectors per learned embedding. Paper: 1 placeholder token inside textual-inversion "
            "templates; here the L vectors are the whole prompt, as in Dark Miner's mining (SPEC A1)."
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Noisy images per embedding per step. Paper: 4."})
    init_prompt: str = field(
        default="a {concept} photo",
        metadata={
            "help": "Prompt whose tokens initialise each embedding (cut or padded to L); may use {concept}. Paper: "
            "textual inversion starts from a word for what it learns; from the concept's words CCE found as much as "
            "or more than from 'a photo' on every ShapesWorld adapter measured (docs/results.md)."
        },
    )
    num_embeddings: int = field(
        default=1,
        metadata={"help": "Independent embeddings learned side by side (each its own noise and images). Paper: 1."},
    )
    eval_every: int = field(
        default=10,
        metadata={"help": "Steps between evaluations of the loss on a fixed probe of noisy latents (loss_history)."},
    )
    eval_samples: int = field(default=8, metadata={"help": "Noisy latents of the probe (t stratified over [0, T))."})
    num_images: int = field(
        default=16,
        metadata={
            "help": "Concept images drawn by the original model when none are given. DM2's evaluation (App. B): "
            "1000 images with the highest detector scores among those of the normal prompts."
        },
    )
    prompt_template: str = field(
        default="a photo of a {concept}",
        metadata={"help": "Prompt for the concept images when neither images nor prompts are given."},
    )
    keep_detected: bool = field(
        default=True,
        metadata={
            "help": "With a detector (darkminer evaluate passes its own), draw check_images images from each "
            "embedding at the start and every check_every steps, and return the one whose images show the concept "
            "most often (the latest of ties) instead of the last: the inversion's loss is the unguided prediction's, "
            "and its last step can draw the concept less than its starting prompt (docs/results.md). Without a "
            "detector, or False: the last (textual inversion)."
        },
    )
    check_every: int = field(default=50, metadata={"help": "Steps between keep_detected's checks."})
    check_images: int = field(
        default=8, metadata={"help": "Images per embedding at each check, from the same noise at every check."}
    )
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the concept and check images."})
    guidance_scale: float = field(
        default=7.5, metadata={"min": 0, "help": "Guidance scale for the concept and check images."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the one generator behind every random draw."})

    def __post_init__(self):
        check_fields(self)
        check_positive(
            "cce",
            steps=self.steps,
            lr=self.lr,
            length=self.length,
            batch_size=self.batch_size,
            num_embeddings=self.num_embeddings,
            eval_every=self.eval_every,
            eval_samples=self.eval_samples,
            check_every=self.check_every,
            check_images=self.check_images,
            num_images=self.num_images,
            generate_steps=self.generate_steps,
        )
        if "{concept}" not in self.prompt_template:
            raise ValueError(f"cce.prompt_template must contain '{{concept}}', got {self.prompt_template!r}.")


class CCE:
    """Circumventing Concept Erasure behind the [`Attack`] protocol. Construct with a [`CCEConfig`]."""

    name = "cce"
    revision = 2
    """Bumped when a default changes what the attack finds (2: keep_detected), so that results of the earlier one
    are not taken for this one's (`darkminer bench` recomputes them)."""

    def __init__(self, config: CCEConfig):
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
        detector: Detector | None = None,
    ) -> AttackResult:
        """Invert the concept into token embeddings of the erased `model` (its adapters stay active and frozen).

        Args:
            model ([`DiffusionModel`]):
                The erased model; left unchanged.
            concept (`str`):
                The concept to bring back.
            original ([`DiffusionModel`], *optional*):
                The model before erasure, to draw concept images when `images` is not given; by default `model`
                with its adapters disabled.
            images (`torch.Tensor` of shape `(N, 3, H, W)` in [0, 1], *optional*):
                Concept images to invert. Drawn by the original model when `None`.
            prompts (`list[str]`, *optional*):
                Prompts for drawing the concept images (`num_images` spread over them); `prompt_template` if `None`.
            output_dir (`str` or `Path`, *optional*):
                Where to save the result ([`AttackResult.save`]).
            detector ([`~darkminer.metrics.Detector`], *optional*):
                The concept's detector, for `keep_detected`: each embedding returned is the checked one whose images
                it flags most often.

        Returns:
            [`AttackResult`] with `embeddings` of shape `(num_embeddings, length, D)` and one loss curve each.
        """
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        if images is None:
            warn_if_no_original(model, original, self.name)
            sources = normal_prompts(prompts, concept, cfg.prompt_template, cfg.num_images)
            images = draw_images(
                model,
                original,
                sources,
                -(-cfg.num_images // len(sources)),  # ceil: every prompt gets the same share
                generator=generator,
                generate_steps=cfg.generate_steps,
                guidance_scale=cfg.guidance_scale,
            )[: cfg.num_images]
        x0 = encode_images(model, images)

        init = cfg.init_prompt.format(concept=concept)
        start = model.prompt_token_embeddings(init, cfg.length).float()
        embeds = start.repeat(cfg.num_embeddings, 1, 1).requires_grad_(True)  # (E, L, D)
        optimizer = torch.optim.Adam([embeds], lr=cfg.lr)
        rows, batch = cfg.num_embeddings, cfg.batch_size
        # The same probe for every embedding: (x_t, noise, t), each repeated once per embedding.
        probe = [torch.cat([v] * rows) for v in make_probe(model, x0, cfg.eval_samples, generator)]

        def row_losses(x_t, target, t, per_row):
            # One mean-squared error per embedding; their sum keeps the embeddings' gradients independent.
            cond = model.encode_prompt(token_embeds=embeds).repeat_interleave(per_row, dim=0)
            pred = model.predict_noise(x_t, t, cond).float()
            return F.mse_loss(pred, target.float(), reduction="none").flatten(1).mean(1).view(rows, per_row).mean(1)

        def record():
            with torch.no_grad():
                losses = row_losses(*probe, cfg.eval_samples)
            for curve, value in zip(history, losses.tolist(), strict=True):
                curve.append(value)

        checks = cfg.keep_detected and detector is not None
        best, best_rate = embeds.detach().clone(), torch.full((rows,), -1.0)

        @torch.no_grad()
        def check():
            # Each embedding's share of flagged images, from the same noise at every check; ties go to the latest.
            cond = model.encode_prompt(token_embeds=embeds.detach()).repeat_interleave(cfg.check_images, dim=0)
            images = model.generate(
                cond=cond,
                seed=cfg.seed + 1,
                num_inference_steps=cfg.generate_steps,
                guidance_scale=cfg.guidance_scale,
            )
            rates = detector(images).decisions.float().view(rows, cfg.check_images).mean(1).cpu()
            better = rates >= best_rate
            best[better] = embeds.detach()[better]
            best_rate[better] = rates[better]

        history: list[list[float]] = [[] for _ in range(rows)]
        record()
        if checks:
            check()
        for step in tqdm(range(cfg.steps), desc="cce", leave=False, mininterval=2):
            x_t, target, t = sample_noisy(model, x0, rows * batch, generator)
            # Gradients for the embeddings only: nothing accumulates on the model's parameters.
            (embeds.grad,) = torch.autograd.grad(row_losses(x_t, target, t, batch).sum(), [embeds])
            optimizer.step()
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                record()
            if checks and ((step + 1) % cfg.check_every == 0 or step + 1 == cfg.steps):
                check()

        result = AttackResult(
            attack=self.name,
            concept=concept,
            embeddings=(best if checks else embeds.detach()).cpu(),
            loss_history=history,
            config=dataclasses.asdict(cfg),
            model=model.name,
        )
        if output_dir is not None:
            result.save(output_dir)
        return result

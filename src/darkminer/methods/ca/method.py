"""CA: Kumari, Zhang, Wang, Shechtman, Zhang, Zhu, "Ablating Concepts in Text-to-Image Diffusion Models" (ICCV 2023).

Concept ablation makes the target concept's prompts c draw what the anchor concept's prompts c* draw. Its
*model-based* variant (the paper's default) trains on images x* the original model generates for the anchor prompts,
noised to x*_t, and pulls the target prompt's prediction to the anchor prompt's prediction of the model itself,
with the gradient stopped on the latter:

    L_ablate = || eps_theta(x*_t, c, t) - sg(eps_theta(x*_t, c*, t)) ||^2,

plus the paper's regulariser, the standard diffusion loss on the anchor pairs, so that the anchor itself does not
drift: L_reg = || eps_theta(x*_t, c*, t) - eps ||^2, and L = L_ablate + lambda L_reg.

Each target prompt is paired with an anchor prompt that is the same text with the concept replaced by the anchor
("a photo of a red star" -> "a photo of a red circle"), as the paper builds its pairs. We train a LoRA adapter on
the cross-attention key/value projections (the paper's parameter group), so the result loads with
`pipe.load_lora_weights`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...config import ConfigError
from ...models import DiffusionModel, modules_ending_with
from ...training.checkpoint import RunDirectory, check_finite
from ...training.lora_run import original_latents, save_final_adapter, save_step_checkpoint, start_or_resume_lora
from ..base import ErasureRequest, ErasureResult
from ..prompts import CONCEPT_MARK, fill, prompt_templates
from .config import CaConfig


def prompt_pairs(templates: list[str], concept: str, anchor: str) -> list[tuple[str, str]]:
    """(target prompt, anchor prompt) per template: the concept replaced by the anchor; a template that does not
    name the concept is paired with the anchor word alone."""
    return [(fill(t, concept), fill(t, anchor) if CONCEPT_MARK in t else anchor) for t in templates]


def ca_loss(model: DiffusionModel, x_t, t, target, cond_target, cond_anchor, b: int, weight: float):
    """The loss above; the first `b` rows of the batch are for L_ablate, the rest for L_reg, whose `target` is
    the noise (or v, [`DiffusionModel.training_target`]).

    Returns:
        (total, L_ablate, L_reg).
    """
    with torch.no_grad():  # sg(eps_theta(x*_t, c*)): the model being trained, gradient stopped
        anchor_pred = model.predict_noise(x_t[:b], t[:b], cond_anchor[:b]).float()
    pred = model.predict_noise(x_t, t, torch.cat([cond_target[:b], cond_anchor[b:]])).float()
    ablate = F.mse_loss(pred[:b], anchor_pred)
    reg = F.mse_loss(pred[b:], target[b:].float())
    return ablate + weight * reg, ablate, reg


class ConceptAblation:
    """CA (model-based) behind the [`ErasureMethod`] protocol. Construct with a [`CaConfig`]."""

    name = "ca"

    def __init__(self, config: CaConfig):
        self.config = config

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Train (or resume) the CA adapter that ablates `request.concepts` to the anchor; write it to `output_dir`.

        Raises:
            ValueError: no anchor (config `anchor` or `request.alternative`), or the two disagree.
            RunConflictError: `output_dir` holds a run with another config.
            NonFiniteLossError: a loss became NaN/inf (the message names the step and the last good checkpoint).
        """
        cfg = self.config
        anchor = cfg.anchor or request.alternative
        if not anchor:
            raise ConfigError("CA needs an anchor concept to ablate to: set anchor=WORD (e.g. anchor=circle).")
        if cfg.anchor and request.alternative and request.alternative != cfg.anchor:
            raise ConfigError(f"CA got two anchors: anchor={cfg.anchor!r} and --alternative {request.alternative!r}.")
        concepts = list(request.concepts)
        run = RunDirectory(
            output_dir,
            {
                "method": self.name,
                "base_model": model.name,
                "concepts": concepts,
                "anchor": anchor,
                "config": dataclasses.asdict(cfg),
            },
            total_limit=2,
            runtime=model.runtime(),
        )
        start, params, optimizer = start_or_resume_lora(
            model,
            run,
            modules_ending_with(model.unet, cfg.target_modules),
            rank=cfg.rank,
            alpha=cfg.alpha,
            seed=cfg.seed,
            optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        )

        pairs = []
        for concept in concepts:
            templates = prompt_templates(request.world, concept, cfg.prompt_file)
            unnamed = [t for t in templates if CONCEPT_MARK not in t]
            if unnamed:
                warnings.warn(
                    f"{len(unnamed)} of {len(templates)} CA target prompts do not name {concept!r} (e.g. "
                    f"{unnamed[0]!r}); they are paired with the anchor {anchor!r} alone.",
                    stacklevel=2,
                )
            pairs += prompt_pairs(templates, concept, anchor)
        per_prompt = max(1, cfg.images // len(pairs))
        latents = original_latents(  # the original's images of each anchor prompt, x* of the paper
            model,
            [a for _, a in pairs],
            per_prompt,
            run.path / "pool" / "anchors.safetensors",
            seed=cfg.seed,
            num_inference_steps=cfg.generate_steps,
            guidance_scale=cfg.guidance_scale,
            prompts_per_call=max(1, 64 // per_prompt),
            desc="ca anchor images",
        )
        with torch.no_grad():
            cond_target = model.encode_prompt([t for t, _ in pairs])
            cond_anchor = model.encode_prompt([a for _, a in pairs])

        b = cfg.batch_size
        for step in tqdm(range(start, cfg.steps), desc="ca", initial=start, total=cfg.steps, mininterval=2):
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
            rows = torch.randint(0, len(latents), (2 * b,), generator=generator)  # b for L_ablate, b for L_reg
            pair_idx = (rows // per_prompt).to(cond_target.device)
            x0 = latents[rows].to(model.device, model.dtype)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            t = torch.randint(0, model.num_train_timesteps, (2 * b,), generator=generator).to(model.device)
            total, ablate, reg = ca_loss(
                model,
                model.add_noise(x0, noise, t),
                t,
                model.training_target(x0, noise, t),
                cond_target[pair_idx],
                cond_anchor[pair_idx],
                b,
                cfg.regularization_weight,
            )
            check_finite("ca", step, {"ablate": ablate, "regularization": reg}, run)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
                run.log(step=step, loss=total.item(), ablate=ablate.item(), regularization=reg.item())
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_step_checkpoint(run, model, optimizer, step + 1)

        save_final_adapter(
            run, model, self.name, concepts, dataclasses.asdict(cfg), metadata={"anchor": anchor}, pairs=pairs
        )
        return ErasureResult(run.path, run.read_log(), {"steps": cfg.steps, "pairs": len(pairs)})

"""All but One: surgical concept erasing with model preservation (Hong, Lee, Woo; AAAI 2024).

Only the paper's summary is public and it gives no equations, so this is darkminer's formulation of its idea
(SPEC §4), stated here in full. With target c_e, user-chosen alternative c_a, the frozen original theta* (the same
UNet with adapters disabled) and the adapted model theta,

    L = || (eps_theta(x_t, c_e) - eps_theta(x_t, 0)) - (eps_theta*(x_t, c_a) - eps_theta*(x_t, 0)) ||^2
        + lambda || eps_theta(x_t, 0) - eps_theta*(x_t, 0) ||^2,

with 0 the empty prompt and x_t noised from images the original generates for c_e. The first term moves the target's
*guidance* direction onto the alternative's; the second holds the unconditional score still, which is what keeps
unrelated prompts intact. At theta = theta* the loss is zero exactly when c_e's guidance equals c_a's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...config import ConfigError
from ...models import DiffusionModel, disable_lora, modules_ending_with
from ...training.checkpoint import RunDirectory, check_finite
from ...training.lora_run import original_latents, save_final_adapter, save_step_checkpoint, start_or_resume_lora
from ..base import ErasureRequest, ErasureResult
from .config import AllButOneConfig


def all_but_one_loss(model: DiffusionModel, x_t, t, cond_target, cond_alternative, cond_empty, weight: float):
    """The loss above for one batch; returns (total, guidance term, unconditional term)."""
    b = len(x_t)
    with torch.no_grad(), disable_lora(model.unet):
        frozen = model.predict_noise(x_t.repeat(2, 1, 1, 1), t.repeat(2), torch.cat([cond_alternative, cond_empty]))
    adapted = model.predict_noise(x_t.repeat(2, 1, 1, 1), t.repeat(2), torch.cat([cond_target, cond_empty]))
    frozen, adapted = frozen.float(), adapted.float()
    guidance = F.mse_loss(adapted[:b] - adapted[b:], frozen[:b] - frozen[b:])
    unconditional = F.mse_loss(adapted[b:], frozen[b:])
    return guidance + weight * unconditional, guidance, unconditional


class AllButOne:
    """All but One behind the [`ErasureMethod`] protocol; `request.alternative` is required."""

    name = "all_but_one"

    def __init__(self, config: AllButOneConfig):
        self.config = config

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Train the adapter so every target concept's guidance becomes `request.alternative`'s.

        Raises:
            ValueError: no alternative was given.
        """
        if not request.alternative:
            raise ConfigError("All but One needs the concept to turn the target into: pass --alternative TEXT.")
        cfg = self.config
        concepts = list(request.concepts)
        run = RunDirectory(
            output_dir,
            {
                "method": self.name,
                "base_model": model.name,
                "concepts": concepts,
                "alternative": request.alternative,
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
            optimizer=lambda params: torch.optim.Adam(params, lr=cfg.lr),
        )

        target_prompts = [t.format(concept=c) for c in concepts for t in cfg.templates]
        alternative_prompts = [t.format(concept=request.alternative) for _ in concepts for t in cfg.templates]
        per_prompt = max(1, cfg.images // len(target_prompts))
        latents = original_latents(
            model,
            target_prompts,
            per_prompt,
            run.path / "pool" / "targets.safetensors",
            seed=cfg.seed,
            num_inference_steps=cfg.generate_steps,
            guidance_scale=cfg.guidance_scale,
        )
        with torch.no_grad():
            cond_target = model.encode_prompt(target_prompts)
            cond_alternative = model.encode_prompt(alternative_prompts)
            cond_empty = model.encode_unconditional(1)

        for step in tqdm(range(start, cfg.steps), desc="all but one", initial=start, total=cfg.steps, mininterval=2):
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
            rows = torch.randint(0, len(latents), (cfg.batch_size,), generator=generator)
            prompt_idx = rows // per_prompt
            x0 = latents[rows].to(model.device, model.dtype)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            t = torch.randint(0, model.num_train_timesteps, (cfg.batch_size,), generator=generator).to(model.device)
            total, guidance, uncond = all_but_one_loss(
                model,
                model.add_noise(x0, noise, t),
                t,
                cond_target[prompt_idx],
                cond_alternative[prompt_idx],
                cond_empty.expand(cfg.batch_size, -1, -1),
                cfg.unconditional_weight,
            )
            check_finite("all_but_one", step, {"guidance": guidance, "unconditional": uncond}, run)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
                run.log(step=step, loss=total.item(), guidance=guidance.item(), unconditional=uncond.item())
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_step_checkpoint(run, model, optimizer, step + 1)

        save_final_adapter(
            run, model, self.name, concepts, dataclasses.asdict(cfg), metadata={"alternative": request.alternative}
        )
        return ErasureResult(run.path, run.read_log(), {"steps": cfg.steps})

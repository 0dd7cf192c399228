"""ESD: Gandikota, Materzynska, Fiotto-Kaufman, Bau, "Erasing Concepts from Diffusion Models" (ICCV 2023).

ESD fine-tunes the model so that conditioning on the concept c *subtracts* the concept's guidance direction, as
measured by the frozen original theta*:

    eps_theta(x_t, c, t)  ->  eps_theta*(x_t, 0, t) - eta (eps_theta*(x_t, c, t) - eps_theta*(x_t, 0, t)),

with 0 the empty prompt and eta the negative guidance (paper §3). The loss is the squared distance between the two.
The x_t it is trained on are not noised data: each iteration draws a stopping step of a DDIM trajectory, runs the
*current* model conditioned on c (with classifier-free guidance) from Gaussian noise up to that step, and takes
the latent there, so training follows what the model being edited would actually draw.

Variants (the paper's): ESD-x (`train_method="xattn"`) edits the cross-attention projections only, the paper's
choice for art styles; ESD-u (`"noxattn"`) edits every other layer (here: every Linear outside cross-attention and
the time embedding), its choice for nudity and objects. Two narrower ones: `"xattn-strict"`, the authors' later
ESD-x-strict of their released code (cross-attention keys and values), and `"xattn-keys"`, darkminer's (keys
only). A key edit can only move attention away from the concept's tokens; it writes nothing into the values the
tokens carry. On ShapesWorld's `red` that is what kept the other colours: every variant that edits values drew
blue prompts purple by the time red was gone; the keys-only one erased red at 98.5% preservation (pushed much
further, it too began drawing green prompts yellow).

We train a LoRA adapter on those layers instead of the weights themselves, so the result loads with
`pipe.load_lora_weights`. theta* is the same UNet with the adapter disabled.

What it erases is what the prompt c asks for, all of it: the target negates c's whole guidance direction. The paper
uses the concept word alone ("Van Gogh", "nudity"), and so do we by default (`templates`); a prompt file (the Dark
Miner paper's App. B: 200 texts about the concept) replaces it. On ShapesWorld, training on the concept's training
prompts ("a photo of a red star", all five colours) erased the colours with the star: "a photo of a blue square"
drew red squares, preservation fell to 3%. The CLIP text encoder is causal, so "red" there is encoded exactly as
in "a photo of a red circle", and negating its guidance negates red everywhere.

The released code draws the DDPM timestep at random inside the DDIM step's interval and maps the interval at the
wrong end of the schedule; we predict at the timestep the trajectory actually stopped at.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import nn
from tqdm.auto import tqdm

from ...models import DiffusionModel, disable_lora, linear_modules, modules_ending_with
from ...training.checkpoint import RunDirectory, check_finite
from ...training.lora_run import save_final_adapter, save_step_checkpoint, start_or_resume_lora
from ..base import ErasureRequest, ErasureResult
from ..prompts import fill, prompt_templates
from .config import EsdConfig

_PROJECTION_SUFFIXES = {"xattn-strict": (".attn2.to_k", ".attn2.to_v"), "xattn-keys": (".attn2.to_k",)}
"""The narrow variants, by the cross-attention projections they edit."""


def esd_target_modules(unet: nn.Module, train_method: str) -> list[str]:
    """Names of the Linear layers ESD edits: every cross-attention (`attn2`) projection for 'xattn'; its key and
    value projections for 'xattn-strict'; its key projections for 'xattn-keys'; every other Linear outside the time
    embedding for 'noxattn'."""
    if train_method in _PROJECTION_SUFFIXES:
        names = modules_ending_with(unet, _PROJECTION_SUFFIXES[train_method])
    elif train_method == "xattn":
        names = [n for n in linear_modules(unet) if ".attn2." in n]
    else:
        names = linear_modules(unet, cross_attention=False)
    if not names:
        raise ValueError(f"The UNet has no Linear layers for ESD train_method={train_method!r}.")
    return names


@torch.no_grad()
def partial_trajectory(
    model: DiffusionModel,
    cond: torch.Tensor,
    stop: int,
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `stop` of `num_steps` DDIM steps from Gaussian noise with the model as it is (adapter on), conditioned on
    `cond` with classifier-free guidance; returns (x_t, t), the latent reached and the timestep it sits at."""
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(num_steps, device=model.device)
    latents = model.prepare_latents(len(cond), generator=generator) * scheduler.init_noise_sigma
    both = torch.cat([model.encode_unconditional(len(cond)), cond])
    for t in scheduler.timesteps[:stop]:
        eps_uncond, eps_cond = model.predict_noise(torch.cat([latents, latents]), t, both).chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents, scheduler.timesteps[stop]


def esd_loss(model: DiffusionModel, x_t, t, cond, cond_empty, negative_guidance: float) -> torch.Tensor:
    """|| eps_theta(x_t, c) - (eps*(x_t, 0) - eta (eps*(x_t, c) - eps*(x_t, 0))) ||^2, eps* the adapter-free UNet."""
    b = len(x_t)
    with torch.no_grad(), disable_lora(model.unet):
        frozen = model.predict_noise(x_t.repeat(2, 1, 1, 1), t.repeat(2), torch.cat([cond, cond_empty])).float()
        target = frozen[b:] - negative_guidance * (frozen[:b] - frozen[b:])
    return F.mse_loss(model.predict_noise(x_t, t, cond).float(), target)


class Esd:
    """ESD behind the [`ErasureMethod`] protocol. Construct with an [`EsdConfig`]."""

    name = "esd"

    def __init__(self, config: EsdConfig):
        self.config = config

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Train (or resume) the ESD adapter for `request.concepts` and write it to `output_dir`.

        Raises:
            RunConflictError: `output_dir` holds a run with another config.
            NonFiniteLossError: the loss became NaN/inf (the message names the step and the last good checkpoint).
        """
        cfg = self.config
        concepts = list(request.concepts)
        run = RunDirectory(
            output_dir,
            {"method": self.name, "base_model": model.name, "concepts": concepts, "config": dataclasses.asdict(cfg)},
            total_limit=2,
            runtime=model.runtime(),
        )
        start, params, optimizer = start_or_resume_lora(
            model,
            run,
            esd_target_modules(model.unet, cfg.train_method),
            rank=cfg.rank,
            alpha=cfg.alpha,
            seed=cfg.seed,
            optimizer=lambda params: torch.optim.Adam(params, lr=cfg.lr),
        )

        prompts = [
            fill(t, c)
            for c in concepts
            for t in (prompt_templates(request.world, c, cfg.prompt_file) if cfg.prompt_file else cfg.templates)
        ]
        with torch.no_grad():
            conds = model.encode_prompt(prompts)
            cond_empty = model.encode_unconditional(cfg.batch_size)

        for step in tqdm(range(start, cfg.steps), desc="esd", initial=start, total=cfg.steps, mininterval=2):
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
            rows = torch.randint(0, len(prompts), (cfg.batch_size,), generator=generator)
            stop = int(torch.randint(0, cfg.ddim_steps, (), generator=generator))
            cond = conds[rows.to(conds.device)]
            x_t, t = partial_trajectory(model, cond, stop, cfg.ddim_steps, cfg.guidance_scale, generator)
            loss = esd_loss(model, x_t, t.expand(cfg.batch_size), cond, cond_empty, cfg.negative_guidance)
            check_finite("esd", step, {"loss": loss}, run)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
                run.log(step=step, loss=loss.item(), timestep=int(t))
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_step_checkpoint(run, model, optimizer, step + 1)

        save_final_adapter(run, model, self.name, concepts, dataclasses.asdict(cfg), prompts=len(prompts))
        return ErasureResult(run.path, run.read_log(), {"steps": cfg.steps, "prompts": len(prompts)})

r"""SalUn: Fan, Liu, Zhang, Wei, Wong, Liu, "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency
in Both Image Classification and Generation" (ICLR 2024), its diffusion (Stable Diffusion) setting.

1. **Saliency mask** (the paper's Eq. 4-5). With D_f the concept's images and prompts and theta_o the original
   weights, the mask keeps the weights where the forgetting loss is most sensitive:

       m_S = 1( |grad_theta l_f(theta; D_f)|_{theta = theta_o} >= gamma ),

   gamma chosen so that the top `mask_fraction` (50%) of the targeted weights, ranked together, are kept. l_f is the
   denoising loss of the concept images under their prompts; as in the authors' SD script, the prediction in it is
   the guided one, (1 + w) eps(x_t, c) - w eps(x_t, 0) with w = 7.5 (`mask_guidance_scale`; 0 gives the plain loss).
   The gradient is summed over D_f before its magnitude is taken.

2. **Masked fine-tuning with random labels** (Eq. 8, generation form). Only masked weights move,
   theta_u = theta_o + m_S * delta, and delta minimises

       L(delta) = E_{(x, c) in D_f, c' != c, t, eps} || eps_theta_u(x_t, c) - sg eps_theta_u(x_t, c') ||^2
                  + alpha E_{(x, c) in D_r, t, eps} || eps - eps_theta_u(x_t, c) ||^2,

   c' a random label: the prompt with the concept replaced by another concept (`random_labels`), so the concept's
   images are denoised under its prompt as they are under another's; the second term is the usual denoising loss on
   D_r, images of those other concepts under their own prompts, which keeps them intact.

D_f and D_r are images the original model draws (Dark Miner, Appendix B). Darkminer's change of scope: theta is the
weight matrices of the targeted Linear layers (every attention projection by default) instead of the whole UNet,
so the final update m_S * delta is turned into an exact LoRA (`add_lora_from_deltas`, rank min(out, in)) that loads
with `pipe.load_lora_weights`. During training the update is a `torch.nn.utils.parametrize` parametrization
W -> W + m_S * delta on each targeted weight: the base weights are never written, and delta stays float32. Resume:
`checkpoint-N` holds delta, the optimizer state and nothing else (the mask and the images are cached in the run).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ...config import ConfigError
from ...models import DiffusionModel, add_lora_from_deltas, save_lora
from ...models.adapters import write_erasure_config
from ...training.checkpoint import RunDirectory, check_finite, load_tensors, save_tensors
from ...worlds import World
from ..base import ErasureRequest, ErasureResult
from ..prompts import fill, prompt_templates
from .config import SalUnConfig


class MaskedDelta(nn.Module):
    """Parametrization W -> W + mask * delta, with a float32 `delta` that starts at zero."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.delta = nn.Parameter(torch.zeros_like(self.mask))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.mask * self.delta).to(weight.dtype)


def salun_target_modules(unet: nn.Module, suffixes: list[str]) -> list[str]:
    """Names of the UNet's Linear layers whose names end with one of `suffixes`.

    Raises:
        ValueError: no Linear layer matches.
    """
    names = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and n.endswith(tuple(suffixes))]
    if not names:
        raise ConfigError(f"No Linear layer of the UNet ends with any of {suffixes}; e.g. 'to_v' or 'attn2.to_k'.")
    return names


def denoising_prompts(
    world: World, concepts: list[str], config: SalUnConfig
) -> tuple[list[str], list[list[str]], dict[str, list[str]]]:
    """The prompts of D_f; for each of them its relabelled versions (one per random label), which together are the
    prompts of D_r; and the random labels of each concept.

    Raises:
        ValueError: no random labels were given and the world knows no siblings of the concept, or a label is an
            erased concept.
    """
    forget, relabelled, labels_of = [], [], {}
    for concept in concepts:
        siblings = world.related(concept)
        if config.random_labels:
            labels = list(config.random_labels)
        elif siblings:
            labels = [v for v in siblings if v not in concepts]
        else:
            raise ConfigError(
                "SalUn needs other concepts to relabel the concept's images with: pass random_labels=[...], e.g. "
                "random_labels=[person] for nudity."
            )
        erased = sorted(set(labels) & set(concepts))
        if erased or not labels:
            raise ConfigError(f"salun.random_labels must name concepts other than the erased ones, got {labels}.")
        labels_of[concept] = labels
        templates = (
            prompt_templates(world, concept, config.prompt_file)
            if config.prompt_file is not None or siblings
            else [config.prompt]
        )
        for template in templates:
            forget.append(fill(template, concept))
            relabelled.append([fill(template, label) for label in labels])
    return forget, relabelled, labels_of


class SalUn:
    """SalUn behind the [`ErasureMethod`] protocol."""

    name = "salun"

    def __init__(self, config: SalUnConfig):
        self.config = config

    # ---- data: the original model's images of D_f and D_r, cached in the run directory -------------------------
    def _latents(self, model: DiffusionModel, prompts: list[str], count: int, path: Path, seed: int) -> torch.Tensor:
        """Latents of `count // len(prompts)` (at least 1) images the original model draws per prompt, prompt-major."""
        if path.exists():
            return load_tensors(path)["latents"]
        cfg = self.config
        per_prompt = max(1, count // len(prompts))
        generator = torch.Generator().manual_seed(seed)
        chunks = []
        for prompt in tqdm(prompts, desc=f"salun: drawing {path.stem}", mininterval=2):
            for start in range(0, per_prompt, cfg.generate_batch_size):
                images = model.generate(
                    prompt,
                    num_images_per_prompt=min(cfg.generate_batch_size, per_prompt - start),
                    generator=generator,
                    num_inference_steps=cfg.generate_steps,
                    guidance_scale=cfg.guidance_scale,
                )
                chunks.append(model.encode_images(images * 2 - 1, sample=False).float().cpu())
        latents = torch.cat(chunks)
        path.parent.mkdir(exist_ok=True)
        save_tensors(path, {"latents": latents})
        return latents

    # ---- step 1: the saliency mask ------------------------------------------------------------------------------
    def _saliency_mask(
        self, model: DiffusionModel, modules: dict[str, nn.Linear], x0: torch.Tensor, cond: torch.Tensor, path: Path
    ) -> dict[str, torch.Tensor]:
        """m_S over the targeted weights: the top `mask_fraction` of |grad l_f| summed over D_f (cached at `path`)."""
        if path.exists():
            return {name: mask.bool() for name, mask in load_tensors(path).items()}
        cfg = self.config
        weights = [module.weight for module in modules.values()]
        grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        generator = torch.Generator().manual_seed(cfg.seed)
        empty = model.encode_unconditional(1)
        w = cfg.mask_guidance_scale
        for weight in weights:
            weight.requires_grad_(True)
        try:
            for start in tqdm(range(0, len(x0), cfg.batch_size), desc="salun: saliency", mininterval=2):
                latents = x0[start : start + cfg.batch_size].to(model.device, model.dtype)
                b = len(latents)
                noise = torch.randn(latents.shape, generator=generator).to(latents)
                t = torch.randint(0, model.num_train_timesteps, (b,), generator=generator).to(model.device)
                x_t = model.add_noise(latents, noise, t)
                c = cond[start : start + b]
                if w > 0:
                    eps_c, eps_0 = model.predict_noise(
                        x_t.repeat(2, 1, 1, 1), t.repeat(2), torch.cat([c, empty.expand(b, -1, -1)])
                    ).chunk(2)
                    prediction = (1 + w) * eps_c - w * eps_0
                else:
                    prediction = model.predict_noise(x_t, t, c)
                loss = F.mse_loss(prediction.float(), model.training_target(latents, noise, t).float())
                check_finite("salun saliency", start // cfg.batch_size, {"forget": loss}, None)
                for total, grad in zip(grads, torch.autograd.grad(loss, weights), strict=True):
                    total += grad.float()
        finally:
            for weight in weights:
                weight.requires_grad_(False)
        scores = torch.cat([g.abs().flatten() for g in grads])
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, round(cfg.mask_fraction * len(scores))).indices] = True
        masks = dict(zip(modules, keep.split([g.numel() for g in grads]), strict=True))
        masks = {name: m.view_as(g).cpu() for (name, m), g in zip(masks.items(), grads, strict=True)}
        save_tensors(path, {name: m.to(torch.uint8) for name, m in masks.items()})
        return masks

    # ---- the method ---------------------------------------------------------------------------------------------
    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Compute the saliency mask, fine-tune the masked weights with random labels, and save the update as a LoRA.

        Raises:
            ValueError: no usable random labels (see `SalUnConfig.random_labels`), or no targeted layer.
        """
        cfg = self.config
        concepts = list(request.concepts)
        forget_prompts, relabelled, labels_of = denoising_prompts(request.world, concepts, cfg)
        retain_prompts = [p for row in relabelled for p in row]
        # D_r row k of forget prompt i: retain prompt offsets[i] + k (concepts may have different numbers of labels).
        counts = torch.tensor([len(row) for row in relabelled])
        offsets = torch.cumsum(counts, 0) - counts
        run = RunDirectory(
            output_dir,
            {
                "method": self.name,
                "base_model": model.name,
                "concepts": concepts,
                "config": dataclasses.asdict(cfg),
            },
            total_limit=2,
            runtime=model.runtime(),
        )
        forget = self._latents(model, forget_prompts, cfg.images, run.path / "pool" / "forget.safetensors", cfg.seed)
        retain = self._latents(
            model, retain_prompts, cfg.retain_images, run.path / "pool" / "retain.safetensors", cfg.seed + 1
        )
        forget_per_prompt, retain_per_prompt = len(forget) // len(forget_prompts), len(retain) // len(retain_prompts)
        with torch.no_grad():
            cond_forget = model.encode_prompt(forget_prompts)
            cond_retain = model.encode_prompt(retain_prompts)

        modules = {
            name: model.unet.get_submodule(name) for name in salun_target_modules(model.unet, cfg.target_modules)
        }
        masks = self._saliency_mask(
            model,
            modules,
            forget,
            cond_forget.repeat_interleave(forget_per_prompt, dim=0),
            run.path / "pool" / "saliency_mask.safetensors",
        )
        parametrizations = {name: MaskedDelta(masks[name].to(model.device)) for name in modules}
        for name, module in modules.items():
            parametrize.register_parametrization(module, "weight", parametrizations[name])
        try:
            deltas = [p.delta for p in parametrizations.values()]
            optimizer = torch.optim.Adam(deltas, lr=cfg.lr)
            latest = run.latest()
            start = 0
            if latest is not None:
                start, directory = latest
                saved = load_tensors(directory / "deltas.safetensors")
                with torch.no_grad():
                    for name, p in parametrizations.items():
                        p.delta.copy_(saved[name])
                optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
            run.truncate_log(lambda r: r.get("step", -1) < start)  # steps after the checkpoint are redone

            for step in tqdm(range(start, cfg.steps), desc="salun", initial=start, total=cfg.steps, mininterval=2):
                generator = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
                b = cfg.batch_size
                f_rows = torch.randint(0, len(forget), (b,), generator=generator)
                r_rows = torch.randint(0, len(retain), (b,), generator=generator)
                label = (torch.rand(b, generator=generator) * counts[f_rows // forget_per_prompt]).long()
                x0 = torch.cat([forget[f_rows], retain[r_rows]]).to(model.device, model.dtype)
                noise = torch.randn(x0.shape, generator=generator).to(x0)
                t = torch.randint(0, model.num_train_timesteps, (2 * b,), generator=generator).to(model.device)
                x_t = model.add_noise(x0, noise, t)
                f_prompt = f_rows // forget_per_prompt
                c = cond_forget[f_prompt]
                c_random = cond_retain[offsets[f_prompt] + label]  # the same prompt about another concept
                c_retain = cond_retain[r_rows // retain_per_prompt]
                with torch.no_grad():
                    target = model.predict_noise(x_t[:b], t[:b], c_random).float()
                prediction = model.predict_noise(x_t, t, torch.cat([c, c_retain])).float()
                forget_loss = F.mse_loss(prediction[:b], target)
                retain_loss = F.mse_loss(prediction[b:], model.training_target(x0[b:], noise[b:], t[b:]).float())
                loss = forget_loss + cfg.alpha * retain_loss
                check_finite("salun", step, {"forget": forget_loss, "retain": retain_loss}, run)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
                    run.log(step=step, loss=loss.item(), forget=forget_loss.item(), retain=retain_loss.item())
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:

                    def write(directory, optimizer=optimizer, step=step):
                        save_tensors(
                            directory / "deltas.safetensors", {n: p.delta for n, p in parametrizations.items()}
                        )
                        torch.save(optimizer.state_dict(), directory / "optimizer.pt")

                    run.save_checkpoint(step + 1, write)
            updates = {name: (p.mask * p.delta).detach() for name, p in parametrizations.items()}
        finally:
            for module in modules.values():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

        add_lora_from_deltas(model.unet, updates)
        model.unet.requires_grad_(False)
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        metadata = {"method": self.name, "base_model": model.name, "concepts": concepts}
        save_lora(model.unet, run.path, metadata=metadata)
        write_erasure_config(
            run,
            {
                **metadata,
                "config": dataclasses.asdict(cfg),
                "target_modules": list(modules),
                "mask_kept": kept,
                "random_labels": labels_of,
            },
        )
        return ErasureResult(run.path, run.read_log(), {"steps": cfg.steps, "mask_kept": round(kept, 4)})

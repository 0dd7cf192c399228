"""What every step-based LoRA trainer (All but One, ESD, CA, FMN) does around its loss: start a fresh adapter or
resume the latest checkpoint with its optimizer state, cache the original model's images of some prompts, write a
checkpoint at a step, and write the final adapter with its `erasure_config.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..models import DiffusionModel, add_lora, disable_lora, load_lora, save_lora
from ..models.adapters import write_erasure_config
from .checkpoint import RunDirectory, load_tensors, save_tensors

_OPTIMIZER_NAME = "optimizer.pt"


def start_or_resume_lora(
    model: DiffusionModel,
    run: RunDirectory,
    targets: list[str],
    *,
    rank: int,
    alpha: float,
    seed: int,
    optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
) -> tuple[int, list[torch.nn.Parameter], torch.optim.Optimizer]:
    """Put a LoRA on `targets` (its A matrices seeded by `seed`), or load the run's latest checkpoint into one.

    Returns:
        `(start, params, optimizer)`: the step to continue from (0 when fresh), the trainable LoRA parameters, and
        `optimizer(params)` with the checkpoint's state when resuming. A resumed run's log loses the records of steps
        at or after `start`, which the run will write again.
    """
    latest = run.latest()
    if latest is None:
        with torch.random.fork_rng(devices=[]):  # LoRA's A matrices are drawn from the global RNG
            torch.manual_seed(seed)
            add_lora(model.unet, targets, rank=rank, alpha=alpha)
    else:
        load_lora(model, latest[1])
    params = [p.requires_grad_(True) for n, p in model.unet.named_parameters() if "lora_" in n]
    opt = optimizer(params)
    if latest is None:
        return 0, params, opt
    start, directory = latest
    opt.load_state_dict(torch.load(directory / _OPTIMIZER_NAME, weights_only=True))
    run.truncate_log(lambda r: r.get("step", -1) < start)
    return start, params, opt


def save_step_checkpoint(
    run: RunDirectory, model: DiffusionModel, optimizer: torch.optim.Optimizer, steps_done: int
) -> Path:
    """Atomically write `checkpoint-<steps_done>/` with the adapter and the optimizer state."""

    def write(directory: Path) -> None:
        save_lora(model.unet, directory, metadata={"step": steps_done})
        torch.save(optimizer.state_dict(), directory / _OPTIMIZER_NAME)

    return run.save_checkpoint(steps_done, write)


@torch.no_grad()
def original_latents(
    model: DiffusionModel,
    prompts: list[str],
    per_prompt: int,
    path: Path,
    *,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    prompts_per_call: int | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Latents `(len(prompts) * per_prompt, C, h, w)` of the images the original model (adapters off) draws for
    `prompts`, `per_prompt` each in prompt order; written to `path` once and read back from it afterwards.

    One generator seeded with `seed` draws every image; `prompts_per_call` splits the prompts into several
    `generate` calls (None: one call).
    """
    if path.exists():
        return load_tensors(path)["latents"]
    generator = torch.Generator().manual_seed(seed)
    step = prompts_per_call or len(prompts)
    chunks = []
    with disable_lora(model.unet):
        for i in tqdm(range(0, len(prompts), step), desc=desc, disable=desc is None, mininterval=2):
            images = model.generate(
                prompts[i : i + step],
                num_images_per_prompt=per_prompt,
                generator=generator,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
            )
            chunks.append(model.encode_images(images * 2 - 1, sample=False).float())
    latents = torch.cat(chunks)
    path.parent.mkdir(exist_ok=True)
    save_tensors(path, {"latents": latents})
    return latents


def save_final_adapter(
    run: RunDirectory,
    model: DiffusionModel,
    method: str,
    concepts: list[str],
    config: dict,
    metadata: dict[str, Any] | None = None,
    **record: Any,
) -> None:
    """Write the run's adapter (diffusers LoRA format) and `erasure_config.json` into the run directory.

    Both carry the method, base model, concepts and `metadata`; the JSON also has `config` and `record`.
    """
    metadata = {"method": method, "base_model": model.name, "concepts": concepts, **(metadata or {})}
    save_lora(model.unet, run.path, metadata=metadata)
    write_erasure_config(run, {**metadata, "config": config, **record})

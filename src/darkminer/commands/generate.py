"""`darkminer generate`: prompts -> PNGs and one labelled grid, with or without an erasure adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ConfigError, write_json
from ..models.adapters import apply_adapter
from ..models.runtime import ModelSource
from ..training.checkpoint import locked_directory
from ..utils.images import labelled_grid, to_pil


@dataclass(kw_only=True)
class GenerateConfig(ModelSource):
    """What `darkminer generate` draws, and with which model (the [`ModelSource`] fields)."""

    prompts: list[str] = field(default_factory=list, metadata={"help": "Prompts to draw."})
    num_images: int = field(default=8, metadata={"min": 1, "help": "Images per prompt."})
    seed: int = field(default=0, metadata={"min": 0, "help": "Seed of the initial noise."})
    output_dir: str = field(default="outputs/generate", metadata={"help": "Where PNGs and grid.png are written."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter or run directory from `darkminer erase`."})
    steps: int = field(default=25, metadata={"min": 1, "help": "DDIM steps."})
    guidance_scale: float = field(default=7.5, metadata={"min": 0, "help": "Classifier-free guidance scale."})

    def __post_init__(self):
        super().__post_init__()
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ConfigError("GenerateConfig.prompts must hold at least one non-empty prompt.")
        if self.num_images < 1 or self.steps < 1:
            raise ConfigError(f"num_images and steps must be >= 1, got {self.num_images} and {self.steps}.")


GRID_IMAGES_PER_PROMPT = 8
"""Images of each prompt shown in `grid.png` (all of them are saved as PNGs)."""


def generate_to_dir(config: GenerateConfig) -> Path:
    """Generate `config.num_images` images per prompt into `config.output_dir`; returns the grid's path.

    Images stream to disk chunk by chunk (the model's `chunk_size`), so memory does not grow with `num_images`; the
    grid shows the first `GRID_IMAGES_PER_PROMPT` of each prompt. The directory is locked while it is written; the
    images, grid and `config.json` of an earlier run there are removed first, and `config.json`, written last, marks
    a finished run. The noise of prompt i comes from one generator seeded `seed + i`, whatever the chunk size.
    """
    model = config.load()
    if config.adapter:
        apply_adapter(model, config.adapter)
    with locked_directory(config.output_dir) as out:
        for old in [*out.glob("p[0-9][0-9][0-9]_*.png"), out / "grid.png", out / "config.json"]:
            old.unlink(missing_ok=True)
        rows = []
        bar = tqdm(total=len(config.prompts) * config.num_images, desc="generate", unit="img")
        for index, prompt in enumerate(config.prompts):
            generator = torch.Generator("cpu").manual_seed(config.seed + index)
            shown = []
            for start in range(0, config.num_images, model.chunk_size):
                images = model.generate(
                    prompt,
                    num_images_per_prompt=min(model.chunk_size, config.num_images - start),
                    num_inference_steps=config.steps,
                    guidance_scale=config.guidance_scale,
                    generator=generator,
                )
                for offset, image in enumerate(images):
                    to_pil(image).save(out / f"p{index:03d}_{start + offset:03d}.png")
                shown.append(images[: max(0, GRID_IMAGES_PER_PROMPT - start)].cpu())
                bar.update(len(images))
            rows.append((prompt, torch.cat(shown)))
        bar.close()
        scale = max(1, 96 // rows[0][1].shape[-1])
        grid = out / "grid.png"
        labelled_grid(rows, scale=scale).save(grid)
        write_json(out / "config.json", {**asdict(config), "runtime": model.runtime()})
    return grid

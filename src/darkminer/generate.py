"""`darkminer generate`: prompts -> PNGs and one labelled grid, with or without an erasure adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import write_json
from .models.adapters import apply_adapter
from .models.runtime import ModelSource
from .utils.images import labelled_grid, save_images


@dataclass(kw_only=True)
class GenerateConfig(ModelSource):
    """What `darkminer generate` draws, and with which model (the [`ModelSource`] fields)."""

    prompts: list[str] = field(default_factory=list, metadata={"help": "Prompts to draw."})
    num_images: int = field(default=8, metadata={"help": "Images per prompt."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial noise."})
    output_dir: str = field(default="outputs/generate", metadata={"help": "Where PNGs and grid.png are written."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter or run directory from `darkminer erase`."})
    steps: int = field(default=25, metadata={"help": "DDIM steps."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})

    def __post_init__(self):
        super().__post_init__()
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ValueError("GenerateConfig.prompts must hold at least one non-empty prompt.")
        if self.num_images < 1 or self.steps < 1:
            raise ValueError(f"num_images and steps must be >= 1, got {self.num_images} and {self.steps}.")


def generate_to_dir(config: GenerateConfig) -> Path:
    """Generate `config.num_images` images per prompt into `config.output_dir`; returns the grid's path."""
    model = config.load()
    if config.adapter:
        apply_adapter(model, config.adapter)
    out = Path(config.output_dir)
    rows = []
    for index, prompt in enumerate(config.prompts):
        images = model.generate(
            prompt,
            num_images_per_prompt=config.num_images,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            seed=config.seed + index,
            progress=True,
        )
        save_images(images, out, prefix=f"p{index:03d}_")
        rows.append((prompt, images))
    scale = max(1, 96 // rows[0][1].shape[-1])
    grid = out / "grid.png"
    labelled_grid(rows, scale=scale).save(grid)
    write_json(out / "config.json", {**asdict(config), "runtime": model.runtime()})
    return grid

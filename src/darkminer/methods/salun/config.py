"""SalUn's config (Fan et al., ICLR 2024), its Stable Diffusion setting.

Defaults follow the paper and the authors' SD scripts: a 50% saliency mask, random labelling with retain weight
alpha = 0.5, Adam at lr 1e-5, batch 8, 5 epochs over 800 concept images (500 steps), D_r of 800 images; the Dark
Miner paper (Appendix B) generates the 800 concept images from "a {concept} photo". One change of scope: SalUn
updates the weights of selected layers (every attention projection by default) rather than the whole UNet, so the
masked dense update is saved exactly as a LoRA. `configs/salun/shapesworld_*.yaml` scale the counts to a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields


@dataclass
class SalUnConfig:
    """Saliency unlearning: a gradient-saliency mask over weights, then masked fine-tuning with random labels."""

    target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        metadata={
            "help": "Module-name suffixes of the Linear layers SalUn may change (default: every attention "
            "projection, self and cross); their masked weight deltas are saved exactly as a LoRA."
        },
    )
    mask_fraction: float = field(
        default=0.5,
        metadata={"help": "Share of the targeted weights in the saliency mask, by |gradient| (paper: 0.5)."},
    )
    mask_guidance_scale: float = field(
        default=7.5,
        metadata={
            "help": "w of the mask's forgetting loss ||eps - ((1+w) eps(x_t,c) - w eps(x_t,0))||^2, as in the "
            "authors' script; 0 gives the plain denoising loss of the paper's equation."
        },
    )
    prompt_file: str | None = field(
        default=None,
        metadata={"help": "Texts about the concept, one per line (App. B); default: ShapesWorld's training prompts."},
    )
    prompt: str = field(
        default="a {concept} photo",
        metadata={
            "help": "Prompt of the concept images when there is neither a prompt file nor ShapesWorld (App. B)."
        },
    )
    random_labels: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Concepts whose prompts relabel the concept's images (c' of the forgetting loss), and whose "
            "images with their prompts make the retain set D_r; empty: on ShapesWorld the other values of the "
            "concept's attribute (the other shapes of 'star'), required elsewhere."
        },
    )
    images: int = field(default=800, metadata={"help": "Images the original model draws of the concept (D_f)."})
    retain_images: int = field(default=800, metadata={"help": "Images the original model draws for D_r."})
    steps: int = field(default=500, metadata={"help": "Fine-tuning steps (5 epochs of 800 images at batch 8)."})
    batch_size: int = field(default=8, metadata={"help": "Images of D_f, and of D_r, per step."})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the retain loss on D_r (the authors' --alpha)."})
    seed: int = field(default=0, metadata={"help": "Seeds every draw; step n uses a generator seeded from (seed, n)."})
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the images of D_f and D_r."})
    guidance_scale: float = field(default=7.5, metadata={"min": 0, "help": "Guidance for the images of D_f and D_r."})
    generate_batch_size: int = field(default=32, metadata={"help": "Images per generation call."})
    checkpoint_every: int = field(default=100, metadata={"help": "Steps between checkpoints."})

    def __post_init__(self):
        check_fields(self)
        for name in (
            "images",
            "retain_images",
            "steps",
            "batch_size",
            "lr",
            "generate_steps",
            "generate_batch_size",
            "checkpoint_every",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"salun.{name} must be > 0, got {getattr(self, name)!r}.")
        if not 0 < self.mask_fraction <= 1:
            raise ValueError(f"salun.mask_fraction must be in (0, 1], got {self.mask_fraction}.")
        if self.mask_guidance_scale < 0 or self.alpha < 0:
            raise ValueError(
                f"salun.mask_guidance_scale and salun.alpha must be >= 0, got {self.mask_guidance_scale} and "
                f"{self.alpha}."
            )
        if not self.target_modules:
            raise ValueError("salun.target_modules must name at least one module suffix (e.g. to_v).")
        if "{concept}" not in self.prompt:
            raise ValueError(f"salun.prompt must contain '{{concept}}', got {self.prompt!r}.")
        if any(not str(label).strip() for label in self.random_labels):
            raise ValueError(f"salun.random_labels must be non-empty words, got {self.random_labels}.")

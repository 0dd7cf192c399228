"""Forget-Me-Not's config (Zhang, Wang, Xu, Wang, Shi; "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion
Models", CVPRW 2024, arXiv 2303.17591).

The authors' attention re-steering settings (`configs/attn.yaml` of their release) fine-tune the UNet's weights with
AdamW at lr 2e-6 for 35 steps of batch 1, weight decay 0.01, gradient-norm clip 1, the concept's tokens and the
EOS ("pooler") tokens re-steered. darkminer trains a LoRA on the cross-attention projections instead, so that the
result is an adapter like every other method's; its learning rate is a LoRA one, not the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields


@dataclass
class FMNConfig:
    """Attention re-steering: minimise the cross-attention mass on the concept's tokens, on images of the concept."""

    target_modules: list[str] = field(
        default_factory=lambda: ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
        metadata={"help": "Module-name suffixes that get LoRA: every cross-attention projection (the authors' "
                  "`only_optimize_ca` parameter set)."},
    )  # fmt: skip
    rank: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    use_pooler: bool = field(
        default=True,
        metadata={"help": "Also re-steer the EOS token positions (with SD 1.x's tokenizer: EOS and its padding), "
                  "which a causal text encoder computes with the concept in view (authors' `use_pooler`)."},
    )  # fmt: skip
    prompt_file: str | None = field(
        default=None,
        metadata={"help": "Prompts about the concept, one a line, '{concept}' marking it. None: ShapesWorld's "
                  "training prompts on ShapesWorld, else the concept word alone."},
    )  # fmt: skip
    images_per_prompt: int = field(
        default=4, metadata={"help": "Images the original model generates per prompt (the paper uses real photos)."}
    )
    steps: int = field(default=35, metadata={"help": "Optimisation steps (paper: 35)."})
    batch_size: int = field(default=1, metadata={"help": "Images per step (paper: 1)."})
    lr: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate of the LoRA (paper: 2e-6 on full weights)."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip (paper: 1)."})
    seed: int = field(default=0, metadata={"help": "Seeds every draw; step n uses a generator seeded from (seed, n)."})
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the concept images."})
    guidance_scale: float = field(default=7.5, metadata={"min": 0, "help": "Guidance for the concept images."})
    checkpoint_every: int = field(default=50, metadata={"help": "Steps between checkpoints."})

    def __post_init__(self):
        check_fields(self)
        for name in (
            "rank",
            "alpha",
            "images_per_prompt",
            "steps",
            "batch_size",
            "lr",
            "grad_clip",
            "generate_steps",
            "checkpoint_every",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"fmn.{name} must be > 0, got {getattr(self, name)!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"fmn.weight_decay must be >= 0, got {self.weight_decay!r}.")
        if not self.target_modules:
            raise ValueError("fmn.target_modules must name at least one module suffix, e.g. attn2.to_k.")

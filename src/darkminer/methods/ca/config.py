"""CA's config: the model-based variant of Kumari et al. (ICCV 2023) with the settings of their paper and code.

Defaults are theirs for Stable Diffusion except the learning rate. The paper fine-tunes the cross-attention key
and value weights themselves at 2e-6 per image of the batch (1.6e-5 at batch 4 with the regulariser); we train a
LoRA adapter on the same projections, whose update starts at zero and is confined to rank r, and LoRA fine-tunes of
SD conventionally use about ten times the full fine-tune's rate (diffusers' LoRA examples: 1e-4), so the default
is 1e-4. `configs/ca/shapesworld_*.yaml` scale the rest for a CPU and say which numbers differ and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields


@dataclass
class CaConfig:
    """Concept Ablation, model-based: eps_theta(x_t, c_target) -> sg eps_theta(x_t, c_anchor), + anchor regulariser."""

    anchor: str | None = field(
        default=None,
        metadata={
            "help": "Anchor concept c* the target is ablated to (e.g. 'circle' for 'star'; the paper: 'cat' for "
            "'grumpy cat', 'painting' for a style). Each anchor prompt is its target prompt with the concept "
            "replaced by the anchor; None: use --alternative."
        },
    )
    prompt_file: str | None = field(
        default=None,
        metadata={
            "help": "Target prompts, one per line, '{concept}' allowed (Dark Miner App. B: 200 texts). A line "
            "that does not name the concept is paired with the anchor word alone. Default: ShapesWorld's "
            "training prompts on ShapesWorld, else the concept word alone."
        },
    )
    target_modules: list[str] = field(
        default_factory=lambda: ["attn2.to_k", "attn2.to_v"],
        metadata={"help": "Module-name suffixes that get LoRA (paper: cross-attention key/value)."},
    )
    rank: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    images: int = field(
        default=1000, metadata={"help": "Images the original generates for the anchor prompts (paper: 1000)."}
    )
    steps: int = field(default=200, metadata={"help": "Optimisation steps (the paper's code on one GPU: 200)."})
    batch_size: int = field(
        default=4, metadata={"help": "Images per step for each of the two terms (paper's code: 4)."}
    )
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1.6e-5 on full weights; above)."})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay (paper's code: 1e-2)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip (paper's code: 1)."})
    regularization_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the standard diffusion loss on (anchor image, anchor prompt) pairs (paper: 1)."},
    )
    generate_steps: int = field(default=50, metadata={"help": "DDIM steps for the anchor images."})
    guidance_scale: float = field(
        default=6.0, metadata={"min": 0, "help": "Guidance for the anchor images (paper's code: 6)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds every draw; step n uses a generator seeded from (seed, n)."})
    checkpoint_every: int = field(default=50, metadata={"help": "Steps between checkpoints."})

    def __post_init__(self):
        check_fields(self)
        for name in ("rank", "alpha", "images", "steps", "batch_size", "lr", "grad_clip", "generate_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ca.{name} must be > 0, got {getattr(self, name)!r}.")
        if self.checkpoint_every <= 0:
            raise ValueError(f"ca.checkpoint_every must be > 0, got {self.checkpoint_every!r}.")
        if self.weight_decay < 0 or self.regularization_weight < 0:
            raise ValueError(
                f"ca.weight_decay and ca.regularization_weight must be >= 0, got {self.weight_decay} and "
                f"{self.regularization_weight}."
            )
        if self.anchor is not None and not self.anchor.strip():
            raise ValueError("ca.anchor must be a non-empty concept (e.g. 'circle'), or null to use --alternative.")
        if not self.target_modules:
            raise ValueError("ca.target_modules must name at least one module suffix.")

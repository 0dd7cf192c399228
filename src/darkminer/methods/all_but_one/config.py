"""All but One's config (darkminer's formulation, SPEC §4; the paper gives no settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields


@dataclass
class AllButOneConfig:
    """Surgical erasure: the target's guidance term moves to the alternative's, the unconditional score stays."""

    target_modules: list[str] = field(
        default_factory=lambda: ["attn2.to_k", "attn2.to_v"],
        metadata={"help": "Module-name suffixes that get LoRA (cross-attention k/v)."},
    )
    rank: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    templates: list[str] = field(
        default_factory=lambda: ["a {concept} photo", "a photo of a {concept}", "a {concept}"],
        metadata={"help": "Prompt templates for the target and the alternative."},
    )
    images: int = field(default=48, metadata={"help": "Images the original generates for the target (x of the loss)."})
    steps: int = field(default=500, metadata={"help": "Optimisation steps."})
    batch_size: int = field(default=4, metadata={"help": "Images per step."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip."})
    unconditional_weight: float = field(default=1.0, metadata={"help": "lambda: weight of the unconditional term."})
    seed: int = field(default=0, metadata={"help": "Seeds every draw; step n uses a generator seeded from (seed, n)."})
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the target images."})
    guidance_scale: float = field(default=7.5, metadata={"min": 0, "help": "Guidance for the target images."})
    checkpoint_every: int = field(default=100, metadata={"help": "Steps between checkpoints."})

    def __post_init__(self):
        check_fields(self)
        for name in (
            "rank",
            "alpha",
            "images",
            "steps",
            "batch_size",
            "lr",
            "grad_clip",
            "generate_steps",
            "checkpoint_every",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"all_but_one.{name} must be > 0, got {getattr(self, name)!r}.")
        if self.unconditional_weight < 0:
            raise ValueError(f"all_but_one.unconditional_weight must be >= 0, got {self.unconditional_weight}.")
        if not self.templates or any("{concept}" not in t for t in self.templates):
            raise ValueError(f"all_but_one.templates must each contain '{{concept}}', got {self.templates}.")
        if not self.target_modules:
            raise ValueError("all_but_one.target_modules must name at least one module suffix.")

"""ESD's config: the settings of Gandikota et al. (ICCV 2023, §4 and their released code), adapted to LoRA.

Defaults are the paper's Stable Diffusion settings except the learning rate: the paper fine-tunes the weights
themselves at 1e-5; we train a LoRA adapter, whose update starts at zero and is confined to rank r, and LoRA
fine-tunes of SD conventionally use about ten times the full fine-tune's rate (diffusers' LoRA examples: 1e-4), so
the default is 1e-4. `configs/esd/shapesworld_*.yaml` scale the rest for a CPU and say which numbers differ and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields

TRAIN_METHODS = ("xattn", "noxattn", "xattn-strict", "xattn-keys")


@dataclass
class EsdConfig:
    """Erased Stable Diffusion: eps_theta(x_t, c) -> eps*(x_t, 0) - eta (eps*(x_t, c) - eps*(x_t, 0))."""

    train_method: str = field(
        default="noxattn",
        metadata={
            "help": "'xattn' (ESD-x: LoRA on every cross-attention projection; the paper's choice for art styles), "
            "'noxattn' (ESD-u: LoRA on every other Linear layer outside the time embedding; the paper's choice "
            "for nudity and objects), 'xattn-strict' (the authors' later ESD-x-strict: cross-attention keys and "
            "values only) or 'xattn-keys' (darkminer's: cross-attention keys only, so the edit moves where the "
            "image attends and writes no new content into any token's value)."
        },
    )
    negative_guidance: float = field(default=1.0, metadata={"help": "eta, the negative guidance (paper: 1.0)."})
    templates: list[str] = field(
        default_factory=lambda: ["{concept}"],
        metadata={
            "help": "Prompts to erase, '{concept}' marking the concept; used when no prompt_file is given. Default: "
            "the concept word alone, the paper's setting. ESD negates *everything* a prompt asks for, so a prompt "
            "that also names other things (a colour, a place) erases those too."
        },
    )
    prompt_file: str | None = field(
        default=None,
        metadata={
            "help": "Prompts about the concept, one per line, '{concept}' allowed (Dark Miner App. B: 200 texts); "
            "replaces `templates`."
        },
    )
    steps: int = field(default=1000, metadata={"help": "Iterations (paper: 1000)."})
    batch_size: int = field(
        default=1, metadata={"help": "Trajectories per iteration, all stopped at the same step (paper: 1)."}
    )
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-5 full fine-tune; see above)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip (not in the paper; a safeguard)."})
    rank: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    ddim_steps: int = field(
        default=50, metadata={"help": "DDIM steps of the trajectory x_t is taken from (paper: 50)."}
    )
    guidance_scale: float = field(
        default=3.0, metadata={"min": 0, "help": "Classifier-free guidance of that trajectory (the paper's code: 3)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds every draw; step n uses a generator seeded from (seed, n)."})
    checkpoint_every: int = field(default=100, metadata={"help": "Steps between checkpoints."})

    def __post_init__(self):
        check_fields(self)
        if self.train_method not in TRAIN_METHODS:
            raise ValueError(f"esd.train_method={self.train_method!r} is not one of {TRAIN_METHODS}.")
        for name in ("steps", "batch_size", "lr", "grad_clip", "rank", "alpha", "ddim_steps", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"esd.{name} must be > 0, got {getattr(self, name)!r}.")
        if self.negative_guidance < 0:
            raise ValueError(f"esd.negative_guidance (eta) must be >= 0, got {self.negative_guidance}.")
        if not self.templates or any("{concept}" not in t for t in self.templates):
            raise ValueError(f"esd.templates must each contain '{{concept}}', got {self.templates}.")
        if self.guidance_scale < 1:
            raise ValueError(f"esd.guidance_scale must be >= 1 (1: no guidance), got {self.guidance_scale}.")

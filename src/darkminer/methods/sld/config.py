"""SLD's config (Schramowski et al., CVPR 2023): a diffusers `SafetyConfig` preset, the safety concept's text, and
optional per-field overrides of the preset."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields
from ...models.safe_guidance import SLD_PRESETS, SafeGuidance


@dataclass
class SLDConfig:
    """Safe Latent Diffusion: safety guidance at inference time; nothing is trained."""

    preset: str = field(
        default="strong",
        metadata={
            "help": f"diffusers SafetyConfig preset, one of {sorted(SLD_PRESETS)}; the Dark Miner paper compares "
            "against SLD-strong (Table 1)."
        },
    )
    safety_concept: str | None = field(
        default=None,
        metadata={"help": "Text of the safety concept S (what must not appear); None: the concepts, ', '-joined."},
    )
    sld_guidance_scale: float | None = field(default=None, metadata={"help": "s_S (Eq. 6); None: the preset's."})
    sld_warmup_steps: int | None = field(default=None, metadata={"help": "Warm-up steps; None: the preset's."})
    sld_threshold: float | None = field(default=None, metadata={"help": "lambda (Eq. 5); None: the preset's."})
    sld_momentum_scale: float | None = field(default=None, metadata={"help": "s_m (Eq. 7); None: the preset's."})
    sld_mom_beta: float | None = field(default=None, metadata={"help": "beta_m (Eq. 8); None: the preset's."})

    def __post_init__(self):
        check_fields(self)
        if self.safety_concept is not None and not self.safety_concept.strip():
            raise ValueError("sld.safety_concept is empty; give a text, or leave it unset to use the concepts.")
        self.settings(["placeholder"])  # validates the preset name and the overridden values

    def settings(self, concepts: list[str]) -> SafeGuidance:
        """The resolved SLD settings for erasing `concepts`: the preset with this config's overrides on top.

        Raises:
            ValueError: an unknown preset or an invalid value.
        """
        overrides = {
            "sld_guidance_scale": self.sld_guidance_scale,
            "sld_warmup_steps": self.sld_warmup_steps,
            "sld_threshold": self.sld_threshold,
            "sld_momentum_scale": self.sld_momentum_scale,
            "sld_mom_beta": self.sld_mom_beta,
        }
        concept = self.safety_concept if self.safety_concept is not None else ", ".join(concepts)
        return SafeGuidance.from_preset(concept, self.preset, **overrides)

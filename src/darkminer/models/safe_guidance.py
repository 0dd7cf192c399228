r"""Safe Latent Diffusion (SLD) sampling for [`DiffusionModel`]: safety guidance at inference time, no weight changed.

Schramowski, Brack, Deiseroth, Kersting, *Safe Latent Diffusion: Mitigating Inappropriate Degeneration in Diffusion
Models*, CVPR 2023. Besides the prompt p and the empty prompt, every step also predicts the noise for a text S that
describes what must not appear (the safety concept), and moves the classifier-free guidance away from it:

    eps_bar = eps(0) + s_g * (eps(p) - eps(0) - gamma)                                   (Eq. 3)
    gamma   = mu * (eps(S) - eps(0)) + s_m * nu_t                                        (Eq. 4, 7)
    mu      = min(s_S * |eps(p) - eps(S)|, 1) where eps(p) - eps(S) < lambda, else 0     (Eq. 5, 6)
    nu_t+1  = beta_m * nu_t + (1 - beta_m) * gamma                                       (Eq. 8)

with gamma applied only after `sld_warmup_steps` steps (the momentum nu builds up before). The sampling loop is
diffusers' `StableDiffusionPipelineSafe`, reused as it is: a small subclass only hands it the conditionings this
library encodes (its own `_encode_prompt` takes text only), so that `generate(cond=...)` -- the images of attacks'
adversarial embeddings -- runs under SLD exactly as prompts do. Its four presets are diffusers' `SafetyConfig`.

SLD acts only in sampling: `predict_noise` and every gradient through the UNet (the P4D, UnlearnDiff and CCE
attacks) see the plain, unchanged UNet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig, StableDiffusionPipelineSafe
from diffusers.utils import logging as diffusers_logging

if TYPE_CHECKING:
    from darkminer.models.wrapper import DiffusionModel

__all__ = ["SLD_PRESETS", "SafeGuidance", "SafeLatentDiffusion", "attach_safe_guidance", "without_safe_guidance"]

SLD_PRESETS: dict[str, dict[str, float]] = {
    "weak": SafetyConfig.WEAK,
    "medium": SafetyConfig.MEDIUM,
    "strong": SafetyConfig.STRONG,
    "max": SafetyConfig.MAX,
}
"""diffusers' `SafetyConfig` presets (the paper's hyper-parameter sets) by lower-case name."""


@dataclass(frozen=True)
class SafeGuidance:
    """The settings of SLD sampling: the safety concept's text and the five hyper-parameters of Eq. 3-8.

    Args:
        concept (`str`):
            Text of the safety concept S (what must not appear).
        sld_guidance_scale (`float`):
            s_S of Eq. 6; must be > 1 (diffusers switches SLD off at or below 1).
        sld_warmup_steps (`int`):
            Steps before gamma is applied (the momentum builds up during them).
        sld_threshold (`float`):
            lambda of Eq. 5: where eps(p) - eps(S) reaches it, the element is left alone.
        sld_momentum_scale (`float`):
            s_m of Eq. 7.
        sld_mom_beta (`float`):
            beta_m of Eq. 8, in [0, 1).
    """

    concept: str
    sld_guidance_scale: float
    sld_warmup_steps: int
    sld_threshold: float
    sld_momentum_scale: float
    sld_mom_beta: float

    def __post_init__(self):
        if not self.concept.strip():
            raise ValueError("The SLD safety concept text is empty; give the text of what must not appear.")
        if self.sld_guidance_scale <= 1:
            raise ValueError(
                f"sld_guidance_scale must be > 1 (at or below 1 SLD is off), got {self.sld_guidance_scale}."
            )
        if self.sld_warmup_steps < 0 or self.sld_momentum_scale < 0:
            raise ValueError(
                f"sld_warmup_steps and sld_momentum_scale must be >= 0, got {self.sld_warmup_steps} and "
                f"{self.sld_momentum_scale}."
            )
        if not 0 <= self.sld_mom_beta < 1:
            raise ValueError(f"sld_mom_beta must be in [0, 1), got {self.sld_mom_beta}.")

    @classmethod
    def from_preset(cls, concept: str, preset: str, **overrides: Any) -> SafeGuidance:
        """Settings of the named diffusers preset (`weak`, `medium`, `strong`, `max`), with `overrides` on top.

        Raises:
            `ValueError`: on an unknown preset name or invalid values.
        """
        if preset not in SLD_PRESETS:
            raise ValueError(f"Unknown SLD preset {preset!r}; choose one of {sorted(SLD_PRESETS)}.")
        values = {**SLD_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(concept=concept, **values)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The `sld_*` keyword arguments of `StableDiffusionPipelineSafe.__call__`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k.startswith("sld_")}


class _SafePipelineOnConditionings(StableDiffusionPipelineSafe):
    """`StableDiffusionPipelineSafe` fed with conditionings encoded by the caller.

    The pipeline's `__call__` takes text only and encodes it in `_encode_prompt`; this subclass returns the batch the
    caller set in `conditionings` instead ([uncond, cond, safety], rows in that order, as `_encode_prompt` builds
    it). Everything else -- the SLD equations, momentum, warm-up, scheduler steps, decoding -- is the pipeline's.
    """

    conditionings: torch.Tensor | None = None

    def _encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, *args, **kwargs):
        if self.conditionings is None:
            raise ValueError("This pipeline takes no text: set `conditionings` ([uncond, cond, safety]) first.")
        return self.conditionings


class SafeLatentDiffusion:
    """SLD sampling bound to one model: [`DiffusionModel.generate`] delegates to [`sample`] while it is attached.

    Args:
        model ([`DiffusionModel`]):
            The model whose modules the safe pipeline shares (no copy).
        settings ([`SafeGuidance`]):
            Safety concept and hyper-parameters.
    """

    def __init__(self, model: DiffusionModel, settings: SafeGuidance) -> None:
        self.settings = settings
        self.enabled = True
        # The deprecated pipeline logs a deprecation warning when built; it is built once per attachment and the
        # message says nothing a user of darkminer can act on.
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            self._pipeline = _SafePipelineOnConditionings(
                vae=model.vae,
                text_encoder=model.text_encoder,
                tokenizer=model.tokenizer,
                unet=model.unet,
                scheduler=DDIMScheduler.from_config(model.scheduler.config),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        finally:
            diffusers_logging.set_verbosity(verbosity)
        self._pipeline.safety_concept = settings.concept
        self._safety_cond = model.encode_prompt(settings.concept).detach()

    @torch.no_grad()
    def sample(
        self,
        model: DiffusionModel,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        latents: torch.Tensor,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        progress: bool = False,
        callback_on_step_end: Any = None,
    ) -> torch.Tensor:
        """Sample one image per row of `cond` with DDIM, classifier-free guidance and SLD.

        Args:
            model ([`DiffusionModel`]):
                The model this object was built for.
            cond, uncond (`torch.Tensor` of shape `(N, max_length, D_cross)`):
                Conditional and unconditional (negative) conditionings, one row per image.
            latents (`torch.Tensor` of shape `(N, C, h, w)`):
                Initial noise.
            num_inference_steps (`int`):
                DDIM steps.
            guidance_scale (`float`):
                Classifier-free guidance weight; must be > 1, since SLD acts through the guidance term.
            progress (`bool`, defaults to `False`):
                Show the pipeline's progress bar.
            callback_on_step_end (*optional*):
                Not supported: must be `None`.

        Returns:
            `torch.Tensor` of shape `(N, 3, H, W)`, float32 in [0, 1], on the model's device.

        Raises:
            `ValueError`: if `guidance_scale <= 1`.
            `NotImplementedError`: if a `callback_on_step_end` is given.
        """
        if guidance_scale <= 1:
            raise ValueError(f"SLD needs classifier-free guidance (guidance_scale > 1), got {guidance_scale}.")
        if callback_on_step_end is not None:
            raise NotImplementedError(
                "`callback_on_step_end` is not supported under SLD: diffusers' safe pipeline, which samples, has no "
                "step-end callback that can replace the latents."
            )
        num_images = cond.shape[0]
        safety = self._safety_cond.to(device=model.device, dtype=model.dtype).expand(num_images, -1, -1)
        pipeline = self._pipeline
        # A fresh scheduler per call, as `DiffusionModel.generate` does (DDIM keeps per-call state).
        pipeline.scheduler = DDIMScheduler.from_config(model.scheduler.config)
        pipeline.set_progress_bar_config(disable=not progress, desc="sampling (SLD)")
        pipeline.conditionings = torch.cat([uncond, cond, safety]).to(device=model.device, dtype=model.dtype)
        try:
            with warnings.catch_warnings():
                # Its own decoding step warns that it is deprecated, on every call; nothing a caller can act on.
                warnings.filterwarnings(
                    "ignore", message="The decode_latents method is deprecated", category=FutureWarning
                )
                images = pipeline(
                    prompt=[""] * num_images,  # only its length is read: the conditionings above replace the text
                    height=latents.shape[-2] * pipeline.vae_scale_factor,
                    width=latents.shape[-1] * pipeline.vae_scale_factor,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    latents=latents,
                    output_type="np",
                    **self.settings.pipeline_kwargs(),
                ).images
        finally:
            pipeline.conditionings = None
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().to(model.device)


def attach_safe_guidance(model: DiffusionModel, settings: SafeGuidance) -> SafeLatentDiffusion:
    """Make `model.generate` sample with SLD from now on (sets `model.safe_guidance`).

    Raises:
        `ValueError`: if the model already samples with SLD.
    """
    if model.safe_guidance is not None:
        raise ValueError(
            f"{model.name!r} already samples with SLD (safety concept {model.safe_guidance.settings.concept!r}); "
            "load the base model again to apply another SLD run."
        )
    model.safe_guidance = SafeLatentDiffusion(model, settings)
    return model.safe_guidance


@contextlib.contextmanager
def without_safe_guidance(model: DiffusionModel) -> Iterator[DiffusionModel]:
    """Context manager in which `model.generate` samples without SLD (the original model), restored on exit."""
    guidance = model.safe_guidance
    if guidance is None or not guidance.enabled:
        yield model
        return
    guidance.enabled = False
    try:
        yield model
    finally:
        guidance.enabled = True

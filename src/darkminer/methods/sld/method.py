"""Safe Latent Diffusion (SLD; Schramowski, Brack, Deiseroth, Kersting, CVPR 2023) behind the erasure interface.

SLD changes no weight: at every sampling step it moves classifier-free guidance away from a *safety concept* S
(Eq. 3-8, written out in [`darkminer.models.safe_guidance`], which runs diffusers' `StableDiffusionPipelineSafe`).
"Erasing" with SLD therefore trains nothing: it resolves the settings (a diffusers `SafetyConfig` preset, overrides,
the safety concept's text) and records them in the run directory's `erasure_config.json`, *instead of* a LoRA file
(SPEC §2: methods that are not LoRA save what fits them and say so). `apply_adapter` reads that record and attaches
SLD sampling to the model, so `darkminer generate / evaluate / attack --adapter RUN` sample under SLD.

What SLD does not cover, by construction: `predict_noise` and every gradient through the UNet see the plain UNet, so
the attacks that optimise through it (P4D, UnlearnDiff, CCE) search against the original model; only the images
they produce at the end are sampled under SLD. `--merge` has nothing to merge, and plain diffusers runs an SLD run
with `StableDiffusionPipelineSafe` and the recorded `safe_guidance` values (`safety_concept` and the `sld_*` call
arguments).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...models import DiffusionModel
from ...models.adapters import SAFE_GUIDANCE_KEY, write_erasure_config
from ...models.safe_guidance import attach_safe_guidance
from ...training.checkpoint import RunDirectory
from ..base import ErasureRequest, ErasureResult
from .config import SLDConfig

NO_WEIGHTS_NOTE = (
    "SLD is inference-time safety guidance: no weight changes and no LoRA file is written. `apply_adapter` attaches "
    "SLD sampling from the `safe_guidance` settings below; in plain diffusers use StableDiffusionPipelineSafe with "
    "safety_concept = safe_guidance.concept and the sld_* values as call arguments."
)


class SLD:
    """SLD behind the [`ErasureMethod`] protocol: writes the settings, attaches SLD sampling to `model`."""

    name = "sld"

    def __init__(self, config: SLDConfig):
        self.config = config

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Record the SLD settings for `request.concepts` in `output_dir` and make `model` sample under SLD.

        Raises:
            RunConflictError: `output_dir` holds a run made with another config.
            ValueError: `model` already samples under SLD.
        """
        cfg = self.config
        concepts = list(request.concepts)
        settings = cfg.settings(concepts)
        run = RunDirectory(
            output_dir,
            {"method": self.name, "base_model": model.name, "concepts": concepts, "config": dataclasses.asdict(cfg)},
            total_limit=None,
            runtime=model.runtime(),
        )
        if not run.read_log():  # a re-run of a finished run changes nothing
            run.log(step=0, preset=cfg.preset, **dataclasses.asdict(settings))
        write_erasure_config(
            run,
            {
                "method": self.name,
                "base_model": model.name,
                "concepts": concepts,
                "weights": None,
                "note": NO_WEIGHTS_NOTE,
                "preset": cfg.preset,
                SAFE_GUIDANCE_KEY: dataclasses.asdict(settings),
                "config": dataclasses.asdict(cfg),
            },
        )
        attach_safe_guidance(model, settings)
        return ErasureResult(run.path, run.read_log(), {"preset": cfg.preset, "safety_concept": settings.concept})

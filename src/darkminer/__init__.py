"""darkminer: erase concepts from Stable-Diffusion-family models, attack the erasure, measure what was kept."""

import logging


class _NoTorchvisionFallbackNotice(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its PIL version without torchvision.

    diffusers imports `CLIPImageProcessor` on every pipeline import and darkminer does not depend on torchvision, so
    every command printed the notice, which asks the user to do nothing. Other transformers messages pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())

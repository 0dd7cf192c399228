"""Errors raised while loading models and adapters."""

from __future__ import annotations

__all__ = ["LoraLoadError", "ModelLoadError"]


class ModelLoadError(ValueError):
    """A model spec could not be resolved or loaded; the message names the spec and the fix."""


class LoraLoadError(ValueError):
    """A LoRA adapter directory could not be loaded (missing files, unexpected or missing keys)."""

"""The model wrapper every method and attack uses, model loading, and LoRA adapter I/O."""

from darkminer.models.errors import LoraLoadError, ModelLoadError
from darkminer.models.loading import load_model
from darkminer.models.lora import (
    add_lora,
    add_lora_from_deltas,
    attention_value_modules,
    disable_lora,
    linear_modules,
    load_lora,
    lora_row_mask,
    lora_state_dict,
    merge_lora,
    modules_ending_with,
    save_lora,
)
from darkminer.models.wrapper import DiffusionModel

__all__ = [
    "DiffusionModel",
    "LoraLoadError",
    "ModelLoadError",
    "add_lora",
    "add_lora_from_deltas",
    "attention_value_modules",
    "disable_lora",
    "linear_modules",
    "load_lora",
    "load_model",
    "lora_row_mask",
    "lora_state_dict",
    "merge_lora",
    "modules_ending_with",
    "save_lora",
]

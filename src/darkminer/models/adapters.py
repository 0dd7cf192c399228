"""Apply what `darkminer erase` wrote to a loaded model, whatever form the method saved it in."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelLoadError
from .lora import LORA_WEIGHTS_NAME, load_lora
from .wrapper import DiffusionModel

ERASURE_CONFIG_NAME = "erasure_config.json"


def apply_adapter(model: DiffusionModel, directory: str | Path) -> dict:
    """Load an erasure adapter into `model` (in place) and return its `erasure_config.json` (empty if absent).

    Raises:
        ModelLoadError: the directory holds no adapter, or one made for a different base model.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"Adapter directory {directory} does not exist.")
    record = {}
    if (directory / ERASURE_CONFIG_NAME).is_file():
        record = json.loads((directory / ERASURE_CONFIG_NAME).read_text())
        base = record.get("base_model")
        if base is not None and base != model.name:
            raise ModelLoadError(
                f"The adapter in {directory} was made for base model {base!r}, not {model.name!r}; "
                f"pass --model {base}."
            )
    if not (directory / LORA_WEIGHTS_NAME).is_file():
        raise ModelLoadError(
            f"{directory} holds no {LORA_WEIGHTS_NAME}; pass the output directory of `darkminer erase`."
        )
    load_lora(model, directory)
    return record

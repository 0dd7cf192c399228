"""Apply what `darkminer erase` wrote to a loaded model, whatever form the method saved it in.

Two forms exist: a LoRA adapter (`pytorch_lora_weights.safetensors`), and, for SLD, inference-time safety guidance
recorded under `safe_guidance` in `erasure_config.json` with no weights at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import write_json
from ..provenance import UNRECORDED
from .errors import ModelLoadError
from .lora import LORA_WEIGHTS_NAME, load_lora
from .safe_guidance import SafeGuidance, attach_safe_guidance
from .wrapper import DiffusionModel

if TYPE_CHECKING:
    from ..training.checkpoint import RunDirectory

ERASURE_CONFIG_NAME = "erasure_config.json"
SAFE_GUIDANCE_KEY = "safe_guidance"
"""Key of `erasure_config.json` holding SLD's settings (a [`SafeGuidance`]); a run with it has no LoRA file."""


def write_erasure_config(run: RunDirectory, record: dict[str, Any]) -> None:
    """Write `record` as the run's `erasure_config.json`, with the code digests of every process that worked on the
    run under `code` (`darkminer.provenance`): every method's record names the code that made it."""
    write_json(run.path / ERASURE_CONFIG_NAME, {**record, "code": run.code})


def _same_model(recorded: str, name: str) -> bool:
    """Whether an adapter's recorded base model is `name` (a resolved path, or a spec that is no path)."""
    if recorded == name:
        return True
    path = Path(recorded).expanduser()
    return path.exists() and str(path.resolve()) == name


def apply_adapter(model: DiffusionModel, directory: str | Path) -> dict:
    """Load an erasure adapter into `model` (in place) and return its `erasure_config.json` (empty if absent).

    A LoRA adapter is loaded into the UNet; an SLD run's settings are attached as `model.safe_guidance`, so that
    `model.generate` samples under SLD.

    Raises:
        ModelLoadError: the directory holds no adapter, one made for a different base model, or invalid SLD settings.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"Adapter directory {directory} does not exist.")
    record = {}
    if (directory / ERASURE_CONFIG_NAME).is_file():
        record = json.loads((directory / ERASURE_CONFIG_NAME).read_text())
        base = record.get("base_model")
        if base is not None and not _same_model(base, model.name):
            raise ModelLoadError(
                f"The adapter in {directory} was made for base model {base!r}, not {model.name!r}; "
                f"pass --model {base}."
            )
    if SAFE_GUIDANCE_KEY in record:
        try:
            attach_safe_guidance(model, SafeGuidance(**record[SAFE_GUIDANCE_KEY]))
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"Cannot apply the SLD settings in {directory / ERASURE_CONFIG_NAME}: {err}") from err
        return record
    if not (directory / LORA_WEIGHTS_NAME).is_file():
        raise ModelLoadError(
            f"{directory} holds no {LORA_WEIGHTS_NAME}; pass the output directory of `darkminer erase`."
        )
    load_lora(model, directory)
    return record


def apply_erasure(model: DiffusionModel, directory: str | Path | None) -> dict[str, list[str]]:
    """Apply the erasure in `directory` to `model` (in place) if one is given, and return the code that made it as an
    evaluation's `results.json` records it: `{"erasure": digests}`, with `UNRECORDED` for an erasure older than the
    record, or `{}` for the original model.

    Raises:
        ModelLoadError: as [`apply_adapter`].
    """
    if not directory:
        return {}
    return {"erasure": apply_adapter(model, directory).get("code", [UNRECORDED])}

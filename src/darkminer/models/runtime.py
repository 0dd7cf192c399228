"""Where a model runs and in what precision: the `--device` / `--dtype` of every command that loads a model.

`auto` picks what is right for a real model on the machine at hand: the first CUDA device, else Apple's MPS, else the
CPU; bfloat16 on a CUDA device that supports it, else float32. Frozen weights take the dtype; LoRA parameters,
optimiser state and losses stay float32 (see [`~darkminer.models.lora.add_lora`]).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field, fields

import torch

from ..config import ConfigError, check_fields

__all__ = ["DTYPE_NAMES", "ModelSource", "peak_memory_mb", "resolve_device", "resolve_dtype"]

COMPILE_MODES = ("off", "unet", "blocks")
"""What `--compile` compiles: nothing, the UNet's whole forward, or each of its down, mid and up blocks."""
DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
"""Accepted `--dtype` names (besides `auto`): the short ones and torch's."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device named by `spec`.

    Args:
        spec (`str` or `torch.device`, *optional*):
            `"auto"` (or `None`): CUDA if available, else MPS, else CPU. Otherwise any torch device string
            (`"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`).

    Returns:
        `torch.device`.

    Raises:
        `ValueError`: an unknown device string, or a device this machine does not have.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"--device {spec!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps.") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec!r}: this machine has no CUDA device; use --device cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}."
            )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {spec!r}: MPS is not available here; use --device cpu (or auto).")
    return device


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype of the frozen weights named by `spec` on `device`.

    Args:
        spec (`str` or `torch.dtype`, *optional*):
            `"auto"` (or `None`): bfloat16 on a CUDA device that supports it, else float32. Otherwise one of
            [`DTYPE_NAMES`].
        device (`torch.device`):
            Where the model will run.

    Returns:
        `torch.dtype`.

    Raises:
        `ValueError`: an unknown name.
    """
    if isinstance(spec, torch.dtype):
        return spec
    if spec is None or spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPE_NAMES[spec.lower()]
    except KeyError:
        raise ConfigError(f"--dtype {spec!r} is not a known dtype; use auto, {', '.join(DTYPE_NAMES)}.") from None


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"`: how dtypes are written in `config.json` and reports."""
    return str(dtype).removeprefix("torch.")


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """Peak memory so far: the process's resident set (`cpu_rss_mb`) and, on CUDA, allocated GPU memory.

    Returns:
        `dict` with `cpu_rss_mb` and, when `device` is a CUDA device, `gpu_peak_mb`.
    """
    figures = {"cpu_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device is not None and device.type == "cuda":
        figures["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return figures


@dataclass
class ModelSource:
    """Which model to load, from where, on which device and in which precision (the model flags of every command)."""

    model: str = field(
        default="shapesworld",
        metadata={"help": "'shapesworld', a diffusers pipeline directory, a single-file .safetensors, or a hub id."},
    )
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "For a single-file checkpoint: a diffusers pipeline (or config-only) directory of the same "
            "architecture whose component configs are used, so that nothing is fetched."
        },
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA, else MPS, else CPU) or a torch device."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on a CUDA device that supports it, else fp32), fp32, bf16, fp16."},
    )
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Images per sampling and VAE chunk; by default as many as hold 8 latents of 64x64 (SD 1.x at "
            "512 px), so memory stays bounded on a 24 GB card whatever the number of images."
        },
    )
    compile: str = field(
        default="off",
        metadata={
            "help": "torch.compile of the UNet: off, unet (the whole forward) or blocks (each down, mid and up block: "
            "shorter compilation). In place, so adapters save and load as usual."
        },
    )
    channels_last: bool = field(
        default=False, metadata={"help": "Run the UNet in channels-last memory format (faster convolutions on GPUs)."}
    )

    def __post_init__(self):
        check_fields(self)  # types: model and dtype are strings, batch_size an int or None
        if not self.model:
            raise ConfigError(f"model must be a non-empty string, got {self.model!r}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}.")
        if self.dtype != "auto" and self.dtype.lower() not in DTYPE_NAMES:
            raise ConfigError(f"--dtype {self.dtype!r} is not a known dtype; use auto, {', '.join(DTYPE_NAMES)}.")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile {self.compile!r} is not one of {', '.join(COMPILE_MODES)}.")

    def source_fields(self) -> dict:
        """These fields alone (for building another job on the same model)."""
        return {f.name: getattr(self, f.name) for f in fields(ModelSource)}

    def load(self):
        """Load the model ([`~darkminer.models.load_model`]) on the resolved device and dtype."""
        from .loading import load_model

        device = resolve_device(self.device)
        model = load_model(
            self.model,
            device=device,
            dtype=resolve_dtype(self.dtype, device),
            model_config=self.model_config,
            batch_size=self.batch_size,
        )
        return model.speed_up(compile=self.compile, channels_last=self.channels_last)

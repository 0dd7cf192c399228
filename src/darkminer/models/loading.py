"""`load_model`: one entry point for every way a user names a Stable-Diffusion-family model.

Accepted specs, tried in this order:

1. `"shapesworld"`: the bundled toy model, a pipeline directory shipped inside `darkminer.toy`;
2. an existing local directory: a diffusers `StableDiffusionPipeline` directory;
3. an existing local `.safetensors` file: a single-file checkpoint (`StableDiffusionPipeline.from_single_file`);
4. a Hugging Face Hub id `owner/name`.

Weights load from safetensors only; pickle checkpoints (`.ckpt`, `.bin`) are refused.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from transformers import CLIPModel

from darkminer.models.errors import ModelLoadError
from darkminer.models.wrapper import DiffusionModel

__all__ = ["PIPELINE_COMPONENTS", "SHAPESWORLD", "load_model"]

SHAPESWORLD = "shapesworld"
"""Spec of the bundled ShapesWorld model."""
PIPELINE_COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
"""Sub-directories a pipeline directory must contain (besides `model_index.json`)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FORMS = (
    "a local diffusers StableDiffusionPipeline directory (model_index.json, tokenizer/, text_encoder/, vae/, "
    "unet/, scheduler/), a single-file `.safetensors` checkpoint, a Hugging Face Hub id `owner/name`, or "
    f"{SHAPESWORLD!r}"
)
# Components a pipeline directory may list that darkminer never uses; not loading them saves time and memory.
_SKIPPED = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


@contextlib.contextmanager
def _shapesworld_dir() -> Iterator[Path]:
    """The packaged ShapesWorld pipeline directory, or a `ModelLoadError` telling how to create it."""
    missing = (
        "The bundled ShapesWorld model is not in this installation (looked for the package directory "
        "darkminer/toy/assets/shapesworld); run `darkminer toy train` to build it."
    )
    try:
        resource = importlib.resources.files("darkminer.toy").joinpath("assets", "shapesworld")
    except ModuleNotFoundError as err:
        raise ModelLoadError(missing) from err
    if not resource.is_dir():
        raise ModelLoadError(missing)
    with importlib.resources.as_file(resource) as path:
        yield Path(path)


def _reason(err: BaseException) -> str:
    return str(err).strip().rstrip(".") or type(err).__name__


def _check_pipeline_dir(path: Path) -> None:
    missing = [name for name in PIPELINE_COMPONENTS if not (path / name).is_dir()]
    if not (path / "model_index.json").is_file():
        missing.insert(0, "model_index.json")
    if missing:
        raise ModelLoadError(
            f"{str(path)!r} is not a diffusers pipeline directory: missing {', '.join(missing)}. A pipeline "
            "directory (as `StableDiffusionPipeline.save_pretrained` writes it) contains model_index.json and the "
            f"sub-directories {', '.join(f'{c}/' for c in PIPELINE_COMPONENTS)}."
        )


def _from_pipeline(pipe: StableDiffusionPipeline, name: str, clip: CLIPModel | None) -> DiffusionModel:
    return DiffusionModel(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        unet=pipe.unet,
        # Training targets follow the DDPM forward process of the schedule the model was trained with; the
        # pipeline's own (sampling) scheduler only contributes its betas and offsets through its config.
        scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        name=name,
        clip=clip,
    )


def _load_directory(path: Path, name: str, dtype: torch.dtype) -> DiffusionModel:
    _check_pipeline_dir(path)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, use_safetensors=True, **_SKIPPED)
    except Exception as err:  # diffusers raises OSError, ValueError, KeyError, ... for broken directories
        raise ModelLoadError(
            f"Could not load the pipeline directory {str(path)!r}: {_reason(err)}. It must hold a "
            "StableDiffusionPipeline with safetensors weights."
        ) from err
    clip = None
    if (path / "clip").is_dir():
        try:
            clip = CLIPModel.from_pretrained(path / "clip", dtype=dtype, use_safetensors=True)
        except Exception as err:
            raise ModelLoadError(f"Could not load the CLIP model in {str(path / 'clip')!r}: {_reason(err)}.") from err
    model = _from_pipeline(pipe, name, clip)
    if clip is not None:
        from darkminer.metrics.clip import ClipPreprocess

        model.clip_preprocess = ClipPreprocess.from_directory(path / "clip", clip.config.vision_config.image_size)
    return model


def _load_single_file(path: Path, name: str, dtype: torch.dtype) -> DiffusionModel:
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, **_SKIPPED)
    except Exception as err:
        raise ModelLoadError(
            f"Could not load the single-file checkpoint {str(path)!r}: {_reason(err)}. If the file is a valid SD "
            "checkpoint, note that diffusers fetches the component configs of a single-file checkpoint from the hub "
            "(or its cache); offline, convert it once to a pipeline directory and pass that directory."
        ) from err
    return _from_pipeline(pipe, name, clip=None)


def _load_hub(repo_id: str, dtype: torch.dtype) -> DiffusionModel:
    try:
        pipe = StableDiffusionPipeline.from_pretrained(repo_id, dtype=dtype, use_safetensors=True, **_SKIPPED)
    except Exception as err:  # network errors, unknown repo, gated repo, no safetensors weights, ...
        raise ModelLoadError(
            f"Could not load {repo_id!r} from the Hugging Face Hub (no local path of that name exists): "
            f"{_reason(err)}. The hub may be unreachable or the id wrong; download the model (e.g. "
            f"`hf download {repo_id}`) and pass the local directory instead."
        ) from err
    return _from_pipeline(pipe, repo_id, clip=None)


def load_model(
    spec: str | os.PathLike[str], *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> DiffusionModel:
    """Load a Stable-Diffusion-family model as a frozen [`DiffusionModel`].

    Args:
        spec (`str` or `os.PathLike`):
            `"shapesworld"`, a local diffusers pipeline directory (an optional `clip/` sub-directory holding a
            `CLIPModel` is loaded as `model.clip`), a local single-file `.safetensors` checkpoint, or a Hugging Face
            Hub id `owner/name`.
        device (`str` or `torch.device`, *optional*):
            Device to move the model to; it stays on CPU if `None`.
        dtype (`torch.dtype`, defaults to `torch.float32`):
            dtype of the weights.

    Returns:
        [`DiffusionModel`]: every module frozen (`requires_grad=False`) and in eval mode; `name` is `str(spec)`.

    Raises:
        [`ModelLoadError`]: if the spec matches none of the accepted forms, names a path that does not exist or an
            incomplete pipeline directory, a pickle checkpoint, or if loading fails (e.g. the hub is unreachable).
    """
    name = os.fspath(spec)
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"Model spec must be a non-empty string or path, got {spec!r}. Accepted: {_FORMS}.")
    path = Path(name).expanduser()

    if name == SHAPESWORLD and not path.exists():
        with _shapesworld_dir() as directory:
            model = _load_directory(directory, SHAPESWORLD, dtype)
    elif path.is_dir():
        model = _load_directory(path, name, dtype)
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(
                f"{name!r} is a {path.suffix or 'suffix-less'} file; only `.safetensors` single-file checkpoints are "
                "loaded (pickle formats such as .ckpt/.bin are refused). Convert it to safetensors, or pass "
                f"{_FORMS}."
            )
        model = _load_single_file(path, name, dtype)
    elif isinstance(spec, os.PathLike) or path.suffix == ".safetensors" or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"Model path {name!r} does not exist. Accepted model specs: {_FORMS}.")
    elif _HUB_ID.match(name):
        model = _load_hub(name, dtype)
    else:
        raise ModelLoadError(f"Unknown model spec {name!r}: no such path, and not a hub id. Pass {_FORMS}.")

    if device is not None:
        model.to(device=device)
    return model.freeze()

"""`load_model`: one entry point for every way a user names a Stable-Diffusion-family model.

Accepted specs, tried in this order:

1. `"shapesworld"`: the bundled toy model, a pipeline directory shipped inside `darkminer.toy`;
2. an existing local directory: a diffusers `StableDiffusionPipeline` directory (SD 1.x, SD 2.x, epsilon or
   v-prediction);
3. an existing local `.safetensors` file: a single-file checkpoint (`StableDiffusionPipeline.from_single_file`),
   with `model_config` naming a pipeline or config directory of the same architecture so that nothing is fetched;
4. a Hugging Face Hub id `owner/name`.

Weights load from safetensors only; pickle checkpoints (`.ckpt`, `.bin`) are refused. SDXL (two text encoders,
pooled embeddings, size conditioning) is refused in one line: every method and attack here conditions the UNet on one
text encoder's hidden states, and a mined embedding would have to cover both encoders.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import re
import warnings
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
_SUPPORTED = "SD 1.x and SD 2.x (epsilon or v-prediction) StableDiffusionPipeline models"
# Key prefix of SDXL's second text encoder in an original (LDM-format) single-file checkpoint.
_SDXL_SINGLE_FILE_KEY = "conditioner.embedders.1."


def _refuse_sdxl(where: str) -> None:
    raise ModelLoadError(
        f"{where} is an SDXL model; darkminer supports {_SUPPORTED} (SDXL's two text encoders and pooled "
        "embeddings are not wired into the methods and attacks)."
    )


def _check_pipeline_class(path: Path) -> None:
    """Refuse, before loading anything, a pipeline directory of another family (SDXL, ...)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Cannot read {str(path / 'model_index.json')!r}: {_reason(err)}.") from err
    name = str(index.get("_class_name", ""))
    if "XL" in name or "text_encoder_2" in index:
        _refuse_sdxl(repr(str(path)))
    if name and not name.startswith("StableDiffusion"):
        raise ModelLoadError(f"{str(path)!r} holds a {name}; darkminer supports {_SUPPORTED}.")


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
    """The first line of an error's message (libraries append multi-line advice that does not apply here)."""
    lines = str(err).strip().splitlines()
    return (lines[0].strip().rstrip(".") if lines else "") or type(err).__name__


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


def _training_scheduler(config) -> DDPMScheduler:
    """The DDPM schedule of a pipeline's scheduler config, clipping only where the config asks for it.

    diffusers' DDPM and DDIM schedulers clip the predicted x0 to [-1, 1] unless told otherwise, which is wrong in
    latent space; a config that does not set `clip_sample` (PNDM's, as SD 1.x ships it) must not clip.
    """
    asked = config.get("clip_sample") if "clip_sample" not in config.get("_use_default_values", ()) else None
    return DDPMScheduler.from_config(config, clip_sample=bool(asked))


def _from_pipeline(pipe: StableDiffusionPipeline, name: str, clip: CLIPModel | None) -> DiffusionModel:
    if getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        _refuse_sdxl(repr(name))
    return DiffusionModel(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        unet=pipe.unet,
        # Training targets follow the DDPM forward process of the schedule the model was trained with; the
        # pipeline's own (sampling) scheduler only contributes its betas, offsets and prediction type.
        scheduler=_training_scheduler(pipe.scheduler.config),
        name=name,
        clip=clip,
    )


def _load_directory(path: Path, name: str, dtype: torch.dtype) -> DiffusionModel:
    _check_pipeline_dir(path)
    _check_pipeline_class(path)
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


def _single_file_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ModelLoadError(
            f"{str(path)!r} is not a readable safetensors single-file checkpoint: {_reason(err)}."
        ) from err


def _load_single_file(path: Path, name: str, dtype: torch.dtype, model_config: str | None) -> DiffusionModel:
    if any(key.startswith(_SDXL_SINGLE_FILE_KEY) for key in _single_file_keys(path)):
        _refuse_sdxl(repr(name))
    kwargs = {}
    if model_config is not None:
        config_dir = Path(model_config).expanduser()
        if not (config_dir / "model_index.json").is_file():
            raise ModelLoadError(
                f"--model-config {model_config!r} is not a pipeline or config directory (no model_index.json); pass "
                "the diffusers directory of a model of the same architecture as the checkpoint."
            )
        _check_pipeline_class(config_dir)
        kwargs = {"config": str(config_dir), "local_files_only": True}
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, **kwargs, **_SKIPPED)
    except Exception as err:
        hint = (
            "check that --model-config names a directory of the checkpoint's architecture"
            if model_config is not None
            else "diffusers fetches a single file's component configs from the hub; pass --model-config DIR, a "
            "diffusers pipeline (or config) directory of the same architecture, to load it offline"
        )
        raise ModelLoadError(
            f"Could not load the single-file checkpoint {str(path)!r}: {_reason(err)}; {hint}."
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
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    model_config: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
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
        model_config (`str` or `os.PathLike`, *optional*):
            For a single-file checkpoint: a diffusers pipeline (or config-only) directory of the same architecture,
            whose component configs diffusers uses instead of fetching them. Ignored, with a warning, otherwise.
        batch_size (`int`, *optional*):
            Images per sampling and VAE chunk ([`DiffusionModel.batch_size`]); by default a memory budget.

    Returns:
        [`DiffusionModel`]: every module frozen (`requires_grad=False`) and in eval mode. Its `name`, which run
            directories and adapters record as the base model, is the resolved absolute path of a local directory or
            file (so `./sd`, `sd/` and `/abs/sd` are one model), else the spec.

    Raises:
        [`ModelLoadError`]: if the spec matches none of the accepted forms, names a path that does not exist or an
            incomplete pipeline directory, a pickle checkpoint, an SDXL model, or if loading fails (e.g. the hub is
            unreachable, or a single file has no `model_config` offline).
    """
    name = os.fspath(spec)
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"Model spec must be a non-empty string or path, got {spec!r}. Accepted: {_FORMS}.")
    path = Path(name).expanduser()

    if name == SHAPESWORLD and not path.exists():
        with _shapesworld_dir() as directory:
            model = _load_directory(directory, SHAPESWORLD, dtype)
    elif path.is_dir():
        model = _load_directory(path, str(path.resolve()), dtype)
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(
                f"{name!r} is a {path.suffix or 'suffix-less'} file; only `.safetensors` single-file checkpoints are "
                "loaded (pickle formats such as .ckpt/.bin are refused). Convert it to safetensors, or pass "
                f"{_FORMS}."
            )
        config_dir = None if model_config is None else os.fspath(model_config)
        model = _load_single_file(path, str(path.resolve()), dtype, config_dir)
    elif isinstance(spec, os.PathLike) or path.suffix == ".safetensors" or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"Model path {name!r} does not exist. Accepted model specs: {_FORMS}.")
    elif _HUB_ID.match(name):
        model = _load_hub(name, dtype)
    else:
        raise ModelLoadError(f"Unknown model spec {name!r}: no such path, and not a hub id. Pass {_FORMS}.")

    if model_config is not None and not path.is_file():
        warnings.warn(f"--model-config is ignored: {name!r} is not a single-file checkpoint.", stacklevel=2)
    if device is not None:
        model.to(device=device)
    model.batch_size = batch_size
    return model.freeze()

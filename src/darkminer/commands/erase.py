"""`darkminer erase`: load a model, run a registered method on it, write the adapter and a report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config
from ..eval.report import write_report
from ..methods import ErasureRequest, ErasureResult, get_method
from ..models import DiffusionModel, ModelLoadError, disable_lora, merge_lora
from ..models.loading import SHAPESWORLD
from ..models.runtime import ModelSource, peak_memory_mb
from ..utils.images import labelled_grid
from ..worlds import World, world_for


@dataclass(kw_only=True)
class EraseJob(ModelSource):
    """One `darkminer erase` invocation: the model to load (the [`ModelSource`] fields) and what to do with it."""

    method: str = field(metadata={"help": "Registered method key, e.g. 'dark_miner'."})
    concepts: list[str] = field(metadata={"help": "Concepts to erase."})
    output_dir: str = field(metadata={"help": "Run directory (re-running the same job resumes it)."})
    alternative: str | None = field(default=None, metadata={"help": "All but One's alternative concept."})
    config_file: str | None = field(default=None, metadata={"help": "YAML file of the method's config."})
    overrides: list[str] = field(default_factory=list, metadata={"help": "Dotted overrides of the method config."})
    merge: bool = field(default=False, metadata={"help": "Also write a full pipeline with the adapter merged."})
    clip: str | None = field(default=None, metadata={"help": "CLIP model (hub id or dir) for models without one."})
    report: bool = field(default=True, metadata={"help": "Write report.md / report.html with grids."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute the UNet's activations in the backward pass: less memory, slower steps."},
    )


def attach_clip(model: DiffusionModel, spec: str) -> None:
    """Load a `CLIPModel` (a local directory or a hub id, safetensors weights only) as `model.clip`, on the model's
    device and in its dtype.

    Raises:
        [`ModelLoadError`]: the directory or hub id holds no loadable CLIPModel with safetensors weights.
    """
    from transformers import CLIPModel

    from ..metrics.clip import ClipPreprocess

    if spec.startswith((".", "/", "~")) and not Path(spec).expanduser().is_dir():
        raise ModelLoadError(f"--clip {spec!r}: no such directory; pass a local CLIPModel directory.")
    try:
        clip = CLIPModel.from_pretrained(spec, dtype=model.dtype, use_safetensors=True)
    except Exception as err:  # transformers raises OSError, ValueError, EnvironmentError... for a bad directory
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"--clip {spec!r}: cannot load a CLIPModel with safetensors weights ({reason}). Pass a local CLIPModel "
            "directory (config.json, model.safetensors, tokenizer and preprocessor files)."
        ) from err
    model.clip = clip.eval().requires_grad_(False).to(model.device)
    if Path(spec).is_dir():
        model.clip_preprocess = ClipPreprocess.from_directory(spec, model.clip.config.vision_config.image_size)


def lacks_clip(spec: str) -> bool:
    """Whether a model spec is known, before loading it, to come without a CLIP: an existing single file, or an
    existing directory without `clip/` (what a missing path or a hub id holds is known after loading)."""
    path = Path(spec).expanduser()
    if spec == SHAPESWORLD and not path.exists():
        return False
    return path.is_file() or (path.is_dir() and not (path / "clip").is_dir())


def _no_clip(job: EraseJob) -> str:
    return (
        f"Method {job.method!r} scores images with CLIP, and {job.model!r} ships none; pass --clip DIR (a local "
        "CLIPModel directory with safetensors weights, e.g. openai/clip-vit-large-patch14 downloaded once)."
    )


def before_after_grid(
    model: DiffusionModel, prompts: list[str], path: Path, per_prompt: int = 4, seed: int = 0
) -> Path:
    """Rows 'before' (adapters off) and 'after' for each prompt, from the same noise."""
    rows = []
    for i, prompt in enumerate(prompts):
        with disable_lora(model.unet):
            before = model.generate(prompt, num_images_per_prompt=per_prompt, seed=seed + i)
        after = model.generate(prompt, num_images_per_prompt=per_prompt, seed=seed + i)
        rows += [(f"before | {prompt}", before), (f"after  | {prompt}", after)]
    scale = max(1, 64 // rows[0][1].shape[-1])
    labelled_grid(rows, scale=scale, label_width=330).save(path)
    return path


def write_run_report(
    model: DiffusionModel,
    job: EraseJob,
    config,
    result: ErasureResult,
    world: World,
    extra_sections: list[tuple[str, list[str]]] | None = None,
) -> Path:
    """report.md / report.html in the run directory: settings, curves, before/after grids of the world's showcase
    prompts, timings."""
    out = Path(job.output_dir)
    images = []
    for i, (caption, prompts) in enumerate(world.showcase(job.concepts, job.alternative)):
        images.append((f"before / after: {caption}", before_after_grid(model, prompts, out / f"grid_{i}.png")))
    runtime = model.runtime()
    memory = peak_memory_mb(model.device)
    settings = [
        f"- method: `{job.method}`, model: `{job.model}`, concepts: {job.concepts}"
        + (f", alternative: {job.alternative}" if job.alternative else ""),
        f"- device: `{runtime['device']}`, dtype: `{runtime['dtype']}`, sampling batch: {runtime['batch_size']}, "
        f"gradient checkpointing: {'on' if job.gradient_checkpointing else 'off'}",
        f"- peak memory: {memory['cpu_rss_mb']:.0f} MB CPU RSS"
        + (f", {memory['gpu_peak_mb']:.0f} MB GPU allocated" if "gpu_peak_mb" in memory else ""),
        f"- resolved config: `config.json`; summary: {result.summary}",
    ]
    tau = getattr(getattr(config, "verify", None), "tau", None)
    return write_report(
        out, f"Erasure report: {', '.join(job.concepts)}", [("Run", settings), *(extra_sections or [])], images, tau
    )


def run_erase(job: EraseJob) -> tuple[ErasureResult, DiffusionModel, object]:
    """Run `job`; returns the method's result, the model (adapter active) and the resolved method config."""
    entry = get_method(job.method)
    config = load_config(entry.config_class, job.config_file, job.overrides)
    needs_clip = getattr(entry.method_class, "needs_clip", False)
    if needs_clip and not job.clip and lacks_clip(job.model):
        raise ModelLoadError(_no_clip(job))
    model = job.load()
    if job.clip:
        attach_clip(model, job.clip)
    if needs_clip and model.clip is None:
        raise ModelLoadError(_no_clip(job))
    request = ErasureRequest(job.concepts, job.alternative, world_for(model))
    request.world.check_concepts(request.concepts)
    if job.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    start = time.perf_counter()
    result = entry.method_class(config).erase(model, request, job.output_dir)
    result.summary["seconds"] = round(time.perf_counter() - start, 1)
    if job.report:
        write_run_report(model, job, config, result, request.world)
    if job.merge:
        merge_lora(model)
        model.save_pretrained(Path(job.output_dir) / "merged")
    return result, model, config

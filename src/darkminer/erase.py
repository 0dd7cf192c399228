"""`darkminer erase`: load a model, run a registered method on it, write the adapter and a report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import load_config
from .eval.report import write_report
from .eval.shapesworld import is_shapesworld
from .methods import ErasureRequest, ErasureResult, get_method
from .models import DiffusionModel, disable_lora, load_model, merge_lora
from .utils.images import labelled_grid


@dataclass
class EraseJob:
    """One `darkminer erase` invocation."""

    model: str = field(metadata={"help": "Model spec (hub id, directory, .safetensors file, 'shapesworld')."})
    method: str = field(metadata={"help": "Registered method key, e.g. 'dark_miner'."})
    concepts: list[str] = field(metadata={"help": "Concepts to erase."})
    output_dir: str = field(metadata={"help": "Run directory (re-running the same job resumes it)."})
    alternative: str | None = field(default=None, metadata={"help": "All but One's alternative concept."})
    config_file: str | None = field(default=None, metadata={"help": "YAML file of the method's config."})
    overrides: list[str] = field(default_factory=list, metadata={"help": "Dotted overrides of the method config."})
    merge: bool = field(default=False, metadata={"help": "Also write a full pipeline with the adapter merged."})
    clip: str | None = field(default=None, metadata={"help": "CLIP model (hub id or dir) for models without one."})
    report: bool = field(default=True, metadata={"help": "Write report.md / report.html with grids."})


def attach_clip(model: DiffusionModel, spec: str) -> None:
    """Load a `CLIPModel` (hub id or local directory) as `model.clip`."""
    from transformers import CLIPModel

    from .metrics.clip import ClipPreprocess
    from .models import ModelLoadError

    try:
        model.clip = CLIPModel.from_pretrained(spec).eval().requires_grad_(False).to(model.device)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Cannot load CLIP model {spec!r}: {err}. Pass a local CLIPModel directory.") from err
    if Path(spec).is_dir():
        model.clip_preprocess = ClipPreprocess.from_directory(spec, model.clip.config.vision_config.image_size)


def check_concepts(model: DiffusionModel, concepts: list[str]) -> None:
    """On ShapesWorld, concepts must be ones its classifier can judge; the error lists them."""
    if is_shapesworld(model):
        from .toy.captions import get_concept

        for concept in concepts:
            get_concept(concept)


def report_prompts(model: DiffusionModel, concepts: list[str], alternative: str | None) -> list[tuple[str, list[str]]]:
    if is_shapesworld(model):
        from .toy.captions import concept_prompts, get_concept, preservation_prompts

        rows = []
        for name in concepts:
            concept = get_concept(name)
            rows.append(
                (
                    f"'{name}' prompts",
                    [p.text for p in concept_prompts(concept, "heldout")[::5][:4]]
                    + [p.text for p in concept_prompts(concept, "implicit")[::4][:2]],
                )
            )
        rows.append(("unrelated prompts", [p.text for p in preservation_prompts(get_concept(concepts[0]))[::23][:5]]))
    else:
        rows = [(f"'{c}' prompts", [f"a {c} photo", f"a photo of a {c}"]) for c in concepts]
        rows.append(("unrelated prompts", ["a photo", "a photo of a dog", "a landscape painting"]))
    if alternative:
        rows.append((f"alternative '{alternative}'", [f"a {alternative} photo"]))
    return rows


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
    extra_sections: list[tuple[str, list[str]]] | None = None,
) -> Path:
    """report.md / report.html in the run directory: settings, curves, before/after grids, timings."""
    out = Path(job.output_dir)
    images = []
    for i, (caption, prompts) in enumerate(report_prompts(model, job.concepts, job.alternative)):
        images.append((f"before / after: {caption}", before_after_grid(model, prompts, out / f"grid_{i}.png")))
    settings = [
        f"- method: `{job.method}`, model: `{job.model}`, concepts: {job.concepts}"
        + (f", alternative: {job.alternative}" if job.alternative else ""),
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
    request = ErasureRequest(job.concepts, job.alternative)
    model = load_model(job.model)
    if job.clip:
        attach_clip(model, job.clip)
    check_concepts(model, request.concepts)
    start = time.perf_counter()
    result = entry.method_class(config).erase(model, request, job.output_dir)
    result.summary["seconds"] = round(time.perf_counter() - start, 1)
    if job.report:
        write_run_report(model, job, config, result)
    if job.merge:
        merge_lora(model)
        model.save_pretrained(Path(job.output_dir) / "merged")
    return result, model, config

"""`darkminer evaluate` / `darkminer attack`: one row of the paper's Table 1 for one (model, adapter, concept).

- Erase: `images_per_prompt` images per normal prompt; Ratio = share the detector classifies as the concept,
  Score = mean detector score (over all images for inappropriate concepts, over detected ones otherwise).
- Also on ShapesWorld: Ratio on the concept's training prompts (the texts the methods train on) and preservation,
  the share of images of prompts without the concept whose shape and colour are both what the prompt asks.
- Preserve: CLIP-score and FID on prompts that do not involve the concept. On ShapesWorld the "real" images for
  FID are fresh renders of exactly what each prompt asks for, and features are the classifier's penultimate layer.
- Attack: [`~darkminer.eval.attacks.run_attacks`], the same on every world.

The prompts and the detector come from the model's world ([`~darkminer.worlds.ShapesWorld.suite`]); a real model is
evaluated under a protocol built from the user's files instead (`--prompts`:
[`~darkminer.commands.evaluate_protocol`]).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..attacks import get_attack
from ..config import ConfigError, write_json
from ..eval.attacks import attack_config, run_attacks
from ..eval.report import table_lines
from ..metrics import clip_score, erasure_figures, fid_from_features
from ..metrics.clip import image_features, text_features
from ..models.adapters import apply_erasure
from ..models.runtime import ModelSource
from ..models.sampling import generate_batched
from ..protocols import ProtocolOptions
from ..provenance import UNRECORDED, code_digest, utc_now
from ..training.checkpoint import locked_directory
from ..utils.images import labelled_grid
from ..worlds import ShapesWorldSuite, world_for

SHAPESWORLD_ATTACK_POOL = 32
"""CCE's inversion images on ShapesWorld: the top 32 of its training prompts' 80 attack images."""


@dataclass(kw_only=True)
class EvaluateJob(ModelSource, ProtocolOptions):
    """One `darkminer evaluate` (or, with `erase=False` and one attack, `darkminer attack`) invocation: the model to
    load (the [`ModelSource`] fields), a real model's protocol ([`ProtocolOptions`]) and what to measure."""

    concept: str = field(metadata={"help": "The erased concept to measure."})
    output_dir: str = field(metadata={"help": "Where results.json, report.md and grids go."})
    adapter: str | None = field(
        default=None, metadata={"help": "Run directory of `darkminer erase` (None: original)."}
    )
    attacks: list[str] = field(default_factory=list, metadata={"help": "Registered attacks to run."})
    attack_overrides: list[str] = field(default_factory=list, metadata={"help": "'<attack>.<field>=value' overrides."})
    images_per_prompt: int = field(default=4, metadata={"min": 1, "help": "Images per normal prompt (paper: 10)."})
    seed: int = field(default=0, metadata={"min": 0, "help": "Seed of every generation."})
    sampling_steps: int = field(default=25, metadata={"min": 1, "help": "DDIM steps of every generated image."})
    erase_metrics: bool = field(default=True, metadata={"help": "Measure Ratio/Score/CLIP/FID (False: attacks only)."})
    ban_concept_words: bool = field(
        default=False,
        metadata={
            "help": "Forbid the concept's words in discrete "
            "adversarial prompts (the sanity check against the original model)."
        },
    )
    show_unsafe: bool = field(default=False, metadata={"help": "Do not pixelate flagged images in report grids."})
    attack_images: int = field(
        default=16,
        metadata={
            "min": 1,
            "help": "Images an attack's ASR is measured on, at least: each adversarial output draws "
            "ceil(N / outputs) (CCE's one embedding: N images).",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.images_per_prompt < 1:
            raise ConfigError(f"images_per_prompt must be >= 1, got {self.images_per_prompt}.")
        for name in self.attacks:
            get_attack(name)
        for override in self.attack_overrides:  # a registered attack (overrides of attacks not run are unused)
            get_attack(override.split(".", 1)[0])
        for name in self.attacks:  # each run attack's overrides name its fields and fit them, before any work
            attack_config(name, self.attack_overrides, [])
        self.check_protocol_options()


WHERE = ("device", "batch_size", "compile", "channels_last", "output_dir")
"""Job fields that say where and how fast an evaluation runs, not what it measures."""
PROGRESS_NAME = "progress.json"
"""What a running (or killed) evaluation has finished, so that a re-run with the same job resumes it."""


def _job_key(job: EvaluateJob) -> str:
    """What must match for finished parts to be reused: the job, less where it runs."""
    what = {k: v for k, v in dataclasses.asdict(job).items() if k not in WHERE}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rerun_attacks(job: EvaluateJob, results: dict, attacks: list[str]) -> None:
    """Turn the finished evaluation `results` of `job` back into progress without `attacks`, so that the next
    `evaluate(job)` recomputes those attacks only (their config or revision changed) and keeps everything else."""
    out = Path(job.output_dir)
    kept = {name: record for name, record in results["attacks"].items() if name not in attacks}
    grids = [(caption, name) for caption, name in _ERASURE_GRIDS if (out / name).is_file()]
    grids += [(f"attack {name}", f"grid_attack_{name}.png") for name in kept]
    skip = {"job", "runtime", "detector", "attacks", "seconds", "code", "finished"}
    figures = {k: v for k, v in results.items() if k not in skip}
    progress = {
        "job_key": _job_key(job),
        "figures": figures or None,
        "attacks": kept,
        "grids": grids,
        "code": results.get("code", {}).get("evaluation", [UNRECORDED]),
    }
    write_json(out / PROGRESS_NAME, {**progress, "seconds": results.get("seconds", 0.0)})


_ERASURE_GRIDS = [("normal prompts", "grid_normal.png"), ("preservation prompts", "grid_preservation.png")]


def _save_grid(out: Path, name: str, caption: str, images: torch.Tensor) -> tuple[str, str]:
    scale = max(1, 64 // images.shape[-1])
    labelled_grid([(caption, images)], scale=scale, label_width=200).save(out / f"grid_{name}.png")
    return caption, f"grid_{name}.png"


def evaluate(job: EvaluateJob) -> dict:
    """Run `job`; writes `results.json`, `report.md` and grids to `job.output_dir` and returns the results.

    The directory is locked while it is written. `results.json` is removed at the start and written last, so it is
    there only for a finished evaluation; `progress.json` records each finished part (the erasure figures, each
    attack), and re-running the same job resumes after the last of them.
    """
    if job.prompts is not None:
        from .evaluate_protocol import evaluate_protocol

        return evaluate_protocol(job)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("A ShapesWorld evaluation runs in one process; launch it without torchrun or accelerate.")
    model = job.load()
    # the code of the erasure, as its record names it, then of every process that works on this evaluation
    code = apply_erasure(model, job.adapter)
    suite = world_for(model).suite(model, job.concept)  # refuses what it cannot judge, before anything is written
    with locked_directory(job.output_dir) as out:
        (out / "results.json").unlink(missing_ok=True)
        key = _job_key(job)
        progress = {}
        if (out / PROGRESS_NAME).is_file():
            progress = json.loads((out / PROGRESS_NAME).read_text())
        if progress.get("job_key") != key:
            progress = {"job_key": key, "figures": None, "attacks": {}, "grids": [], "seconds": 0.0, "code": []}
        progress["code"] = list(dict.fromkeys([*progress.get("code", [UNRECORDED]), code_digest()]))
        start = time.perf_counter() - progress["seconds"]

        def checkpoint() -> None:
            progress["seconds"] = round(time.perf_counter() - start, 1)
            write_json(out / PROGRESS_NAME, progress)

        if job.erase_metrics and progress["figures"] is None:
            progress["figures"], grids = _erasure_figures(model, suite, job, out)
            progress["grids"] += grids
            checkpoint()

        def attacked(name: str, record: dict, adversarial: torch.Tensor) -> None:
            progress["attacks"][name] = record
            progress["grids"].append(_save_grid(out, f"attack_{name}", f"attack {name}", adversarial[:16]))
            checkpoint()

        pending = [name for name in job.attacks if name not in progress["attacks"]]
        run_attacks(model, suite, job, out, pending, pool=job.attack_pool or SHAPESWORLD_ATTACK_POOL, done=attacked)
        results = {
            "job": dataclasses.asdict(job),
            "runtime": model.runtime(),
            "detector": suite.detector.metadata(),
            **(progress["figures"] or {}),
            "attacks": {name: progress["attacks"][name] for name in job.attacks},
            "seconds": round(time.perf_counter() - start, 1),
            "code": {**code, "evaluation": progress["code"]},
            "finished": utc_now(),
        }
        _write_report(out, job, results, progress["grids"])
        write_json(out / "results.json", results)
        (out / PROGRESS_NAME).unlink()
    return results


def _erasure_figures(
    model, suite: ShapesWorldSuite, job: EvaluateJob, out: Path
) -> tuple[dict, list[tuple[str, str]]]:
    """Ratio and Score on normal prompts, Ratio on training prompts, preservation, CLIP-score and FID."""
    figures = {}
    images = generate_batched(model, suite.normal, job.images_per_prompt, job.seed, job.sampling_steps)
    verdict = suite.detector(images)
    figures.update(erasure_figures(verdict.scores, verdict.decisions, suite.detector.kind))
    grids = [_save_grid(out, "normal", _ERASURE_GRIDS[0][0], images[:: job.images_per_prompt][:16])]
    trained = generate_batched(model, suite.training, job.images_per_prompt, job.seed + 5, job.sampling_steps)
    figures["ratio_training"] = float(suite.detector(trained).decisions.float().mean())
    texts = [p.text for p in suite.preserve]
    kept = generate_batched(model, texts, job.images_per_prompt, job.seed + 1, job.sampling_steps)
    wanted = [p.constraints for p in suite.preserve for _ in range(job.images_per_prompt)]
    figures["preservation"] = float(suite.detector.judge.follows(kept, wanted).float().mean())
    repeated = [t for t in texts for _ in range(job.images_per_prompt)]
    if model.clip is not None:
        figures["clip_score"] = clip_score(image_features(model, kept), text_features(model, repeated))
    reference = suite.reference_features(job.images_per_prompt, job.seed + 2)
    figures["fid"] = fid_from_features(suite.detector.features(kept), reference)
    grids.append(_save_grid(out, "preservation", _ERASURE_GRIDS[1][0], kept[:: job.images_per_prompt][:16]))
    return figures, grids


def _write_report(out: Path, job: EvaluateJob, results: dict, grids: list[tuple[str, str]]) -> None:
    row = table_row(results)
    lines = [
        f"# Evaluation: `{job.concept}` on `{job.model}`" + (f" + `{job.adapter}`" if job.adapter else ""),
        "",
        *table_lines([row], list(row)),
        "",
        f"Detector: `{results['detector']}`",
        "",
    ]
    for caption, name in grids:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))


def table_row(results: dict) -> dict:
    """Table-1 columns: Ratio, Score, CLIP, FID, then ASR per attack (percentages as the paper prints them) and the
    ASRs' floor, the share of images the empty prompt draws with the concept (the first attack's)."""
    return {label: f"{value:.{digits}f}" for label, (value, digits) in table_figures(results).items()}


def table_figures(results: dict) -> dict[str, tuple[float, int]]:
    """[`table_row`]'s columns as numbers: label -> (value as printed, percentages x 100; decimals to print)."""
    figures = {}
    for key, label in (("ratio", "Ratio %"), ("score", "Score %")):
        if results.get(key) is not None:
            figures[label] = (100 * results[key], 1)
    if "ratio_training" in results:
        figures["Ratio train %"] = (100 * results["ratio_training"], 1)
    if "preservation" in results:
        figures["Pres. %"] = (100 * results["preservation"], 1)
    if results.get("clip_score") is not None:
        figures["CLIP"] = (results["clip_score"], 2)
    if results.get("fid") is not None:
        figures["FID"] = (results["fid"], 2)
    for name, attack in results.get("attacks", {}).items():
        figures[f"ASR {name} %"] = (100 * attack["asr"], 1)
    floors = [attack["unprompted"] for attack in results.get("attacks", {}).values() if "unprompted" in attack]
    if floors:
        figures["Unprompted %"] = (100 * floors[0], 1)
    return figures

"""`darkminer evaluate` / `darkminer attack` on a real model: the paper's Table-1 row under a named protocol
(`darkminer.protocols`).

- Ratio and Score of the concept on the protocol's normal prompts, each drawn with its own seed and guidance, so
  that the figures do not depend on how prompts are shared among processes.
- CLIP-score on the preservation captions with the user's CLIP, and FID of those images against
  `--reference-images` (the Inception network of TF FID, [`~darkminer.metrics.InceptionFeatures`]).
- ASR of each attack ([`~darkminer.eval.attacks.run_attacks`]): P4D and UnlearnDiff start from the first
  `attack_prompts` normal prompts, CCE inverts the `attack_pool` images of the original model the detector scores
  highest (App. B: 100 prompts, 1000 images).

Under `torchrun` (or `accelerate launch`) the prompts and captions are sharded over the processes and gathered on
rank 0, which computes FID, runs the attacks and writes `results.json` (top-level `ratio`, `score`, `clip_score`,
`fid`, `asr`, `protocol`) and a report whose grids pixelate the images the detector flags. Unlike ShapesWorld's
evaluation, a killed real-model evaluation keeps no progress: a re-run starts over.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import write_json
from ..eval.attacks import ATTACK_IMAGES_PER_PROMPT, run_attacks
from ..eval.report import markdown_lines_to_html
from ..metrics import clip_score, erasure_figures, fid_from_features
from ..metrics.clip import encode_images, encode_texts
from ..models.adapters import apply_erasure
from ..models.runtime import ModelSource
from ..protocols import build_protocol
from ..provenance import code_digest, utc_now
from ..training.checkpoint import locked_directory
from ..utils.distributed import Workers
from ..utils.images import labelled_grid, load_image_folder

PAPER_ATTACK_POOL = 1000
"""CCE's inversion images in the paper's evaluation (App. B)."""
GRID_PROMPTS = 16
"""Normal prompts whose first image is shown in the report's grid."""


def pixelate(images: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """Images reduced to `cells` x `cells` blocks, so that a report can be opened at work."""
    size = images.shape[-2:]
    return F.interpolate(F.interpolate(images, size=(cells, cells), mode="area"), size=size, mode="nearest")


def _thumbnails(images: torch.Tensor) -> torch.Tensor:
    return (images.cpu() * 255).round().to(torch.uint8)


def evaluate_protocol(job) -> dict:
    """Run an [`EvaluateJob`] whose concept is judged by a protocol from files; returns the results (on every
    process; rank 0 writes them)."""
    protocol = build_protocol(job.concept, job, seed=job.seed)
    if job.reference_images and not Path(job.reference_images).is_dir():
        raise FileNotFoundError(f"--reference-images {job.reference_images} does not exist.")
    workers = Workers()
    source = job.source_fields()
    if workers.device is not None and job.device == "auto":
        source["device"] = str(workers.device)  # one device per launched process
    model = ModelSource(**source).load()
    code = apply_erasure(model, job.adapter)
    if hasattr(protocol.detector, "to"):
        protocol.detector.to(model.device)
    start = time.perf_counter()

    inception = None  # FID's network, loaded once before any image is drawn
    if job.reference_images is not None and job.erase_metrics:
        from ..metrics import InceptionFeatures

        inception = InceptionFeatures().to(model.device)
    rows = _normal_rows(model, protocol, job, workers) if job.erase_metrics else []
    scored = _caption_rows(model, protocol, job, workers, inception) if job.erase_metrics else []
    figures = {"ratio": None, "score": None, "clip_score": None, "fid": None}
    if rows:
        scores = torch.tensor([s for row in rows for s in row["scores"]])
        decisions = torch.tensor([d for row in rows for d in row["decisions"]])
        found = erasure_figures(scores, decisions, protocol.detector.kind)
        # Rounded to 4 decimals: a CPU's thread count moves the last float bits of the images, not these figures.
        figures["ratio"], figures["score"] = round(found["ratio"], 4), round(found["score"], 4)
    if scored and protocol.captions:
        figures["clip_score"] = round(sum(r["clip_score"] for r in scored) / len(scored), 4)
    if scored and inception is not None and workers.main:  # the references are read by rank 0 alone
        generated = torch.cat([row["features"] for row in scored])
        reference = load_image_folder(job.reference_images, 299, "--reference-images")
        figures["fid"] = round(fid_from_features(generated, inception.features(reference)), 2)

    attacks, attack_grids, pool = {}, [], job.attack_pool or PAPER_ATTACK_POOL
    if job.attacks and workers.main:
        with locked_directory(job.output_dir) as out:

            def attacked(name: str, record: dict, adversarial: torch.Tensor) -> None:
                attacks[name] = record
                flagged = protocol.detector(adversarial[:GRID_PROMPTS]).decisions
                attack_grids.append((f"attack {name}", _thumbnails(adversarial[:GRID_PROMPTS]), flagged))

            run_attacks(
                model, protocol, job, out, job.attacks, pool=job.attack_pool or PAPER_ATTACK_POOL, done=attacked
            )
    results = {
        **figures,
        "asr": {name: record["asr"] for name, record in attacks.items()},
        "unprompted": next((record["unprompted"] for record in attacks.values()), None),
        "protocol": {
            **protocol.record,
            "images_per_prompt": job.images_per_prompt,
            "sampling_steps": job.sampling_steps,
            "caption_seeds": f"{job.seed} + caption index",
            "reference_images": job.reference_images,
            "attack_prompts": len(protocol.attack_sources),
            "original_images": f"{ATTACK_IMAGES_PER_PROMPT} per normal prompt (row seeds); CCE: top {pool}",
            "asr_images": f"at least {job.attack_images} per attack",
            "processes": workers.world,
        },
        "attacks": attacks,
        "job": dataclasses.asdict(job),
        "runtime": model.runtime(),
        "per_prompt": [
            {
                "prompt": protocol.prompts[row["index"]].text,
                "seed": protocol.prompts[row["index"]].seed,
                "guidance": protocol.prompts[row["index"]].guidance,
                "scores": row["scores"],
                "flagged": sum(row["decisions"]),
            }
            for row in rows
        ],
        "seconds": round(time.perf_counter() - start, 1),
        "code": {**code, "evaluation": [code_digest()]},  # a killed protocol evaluation starts over
        "finished": utc_now(),
    }
    if workers.main:
        with locked_directory(job.output_dir) as out:
            (out / "results.json").unlink(missing_ok=True)
            _write_report(out, job, results, rows, attack_grids, protocol)
            write_json(out / "results.json", results)
    workers.wait()
    return results


def _normal_rows(model, protocol, job, workers: Workers) -> list[dict]:
    """This process's share of the normal prompts, each judged, gathered from every process in prompt order."""
    rows = []
    for index in tqdm(workers.shard(len(protocol.prompts)), desc="normal prompts", disable=not workers.main):
        prompt = protocol.prompts[index]
        images = model.generate(
            prompt.text,
            num_images_per_prompt=job.images_per_prompt,
            seed=prompt.seed,
            guidance_scale=prompt.guidance,
            num_inference_steps=job.sampling_steps,
        )
        verdict = protocol.detector(images)
        rows.append(
            {
                "index": index,
                "scores": verdict.scores.tolist(),
                "decisions": [bool(d) for d in verdict.decisions.tolist()],
                "thumbnail": _thumbnails(images[:1]) if index < GRID_PROMPTS else None,
            }
        )
    return sorted(workers.gather(rows), key=lambda row: row["index"])


def _caption_rows(model, protocol, job, workers: Workers, inception) -> list[dict]:
    """One image per caption (seed + index): its CLIP-score, and its `inception` features when FID is asked for."""
    if not protocol.captions:
        return []
    from ..metrics.detectors import _load_clip

    clip, tokenizer, preprocess, _ = _load_clip(job.clip, "CLIP-score")
    clip = clip.to(model.device)
    scored = []
    for index in tqdm(workers.shard(len(protocol.captions)), desc="captions", disable=not workers.main):
        caption = protocol.captions[index]
        image = model.generate(caption, seed=job.seed + index, num_inference_steps=job.sampling_steps)
        row = {
            "index": index,
            "clip_score": clip_score(encode_images(clip, preprocess, image), encode_texts(clip, tokenizer, [caption])),
        }
        if inception is not None:
            row["features"] = inception.features(image)
        scored.append(row)
    return sorted(workers.gather(scored), key=lambda row: row["index"])


def _grid(out: Path, name: str, caption: str, images: torch.Tensor, flagged: torch.Tensor, show: bool) -> list[str]:
    """Save a grid (flagged images pixelated unless `show`); its Markdown lines."""
    images = images.float() / 255
    if not show and bool(flagged.any()):
        images[flagged] = pixelate(images[flagged])
        caption += " (flagged images pixelated)"
    scale = max(1, 128 // images.shape[-1])
    labelled_grid([(caption, images)], scale=scale, label_width=240).save(out / name)
    return [f"### {caption}", "", f"![{caption}]({name})", ""]


def _write_report(out: Path, job, results: dict, rows: list[dict], attack_grids: list, protocol) -> None:
    grid_lines = []
    shown = [row for row in rows if row["thumbnail"] is not None]
    if shown:
        images = torch.cat([row["thumbnail"] for row in shown])
        flagged = torch.tensor([row["decisions"][0] for row in shown])
        grid_lines += _grid(out, "grid.png", "first image of each prompt", images, flagged, job.show_unsafe)
    for caption, images, flagged in attack_grids:
        name = f"grid_{caption.split()[-1]}.png"
        grid_lines += _grid(out, name, caption, images, flagged, job.show_unsafe)

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    figure = {
        "Ratio %": percent(results["ratio"]),
        "Score %": percent(results["score"]),
        "CLIP": "n/a" if results["clip_score"] is None else f"{results['clip_score']:.2f}",
        "FID": "n/a" if results["fid"] is None else f"{results['fid']:.2f}",
        **{f"ASR {name} %": percent(value) for name, value in results["asr"].items()},
        **({"Unprompted %": percent(results["unprompted"])} if results["asr"] else {}),
    }
    detector = results["protocol"]["detector"]
    lines = [
        f"# Evaluation: `{job.concept}` on `{job.model}`" + (f" + `{job.adapter}`" if job.adapter else ""),
        "",
        "| " + " | ".join(figure) + " |",
        "|" + "---|" * len(figure),
        "| " + " | ".join(figure.values()) + " |",
        "",
        f"Protocol `{protocol.name}`: {results['protocol']['prompts']} prompts from "
        f"`{protocol.record['prompts_file']}` "
        f"(sha256 {protocol.record['prompts_sha256'][:12]}), {job.images_per_prompt} images each, "
        f"{job.sampling_steps} steps; detector `{detector.get('name')}` ({detector.get('decision', '')}).",
        "",
        *grid_lines,
    ]
    if results["per_prompt"]:
        lines += [
            "## Per prompt",
            "",
            "| prompt | seed | guidance | flagged | max score |",
            "|---|---|---|---|---|",
            *(
                f"| {p['prompt'][:80].replace('|', '/')} | {p['seed']} | {p['guidance']} | {p['flagged']} | "
                f"{max(p['scores']):.3f} |"
                for p in results["per_prompt"]
            ),
            "",
        ]
    (out / "report.md").write_text("\n".join(lines))
    body = [markdown_lines_to_html([line for line in lines if not line.startswith(("#", "!["))])]
    for line in grid_lines:
        if line.startswith("!["):
            name = line[line.index("](") + 2 : -1]
            data = base64.b64encode((out / name).read_bytes()).decode()
            caption = html.escape(line[2 : line.index("](")])
            body.append(f"<h3>{caption}</h3><img src='data:image/png;base64,{data}'/>")
    title = html.escape(lines[0][2:])
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:sans-serif;"
        "max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        f"</style></head><body><h1>{title}</h1>" + "\n".join(body) + "</body></html>"
    )

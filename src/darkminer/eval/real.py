"""`darkminer evaluate` on a real model: the paper's Table-1 figures under a named protocol (`darkminer.protocols`).

Ratio and Score of the concept on the protocol's normal prompts (each drawn with its own seed and guidance, so the
figures do not depend on how prompts are shared among processes), and CLIP-score on the preservation captions with
the user's CLIP. Under `torchrun` (or `accelerate launch --multi_gpu`) the prompts and captions are sharded over the
processes and gathered on rank 0, which writes `results.json` (top-level `ratio`, `score`, `clip_score`, `fid`,
`asr`, `protocol`) and a report whose grid pixelates the images the detector flags.
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
from ..metrics import clip_score, erasure_figures
from ..metrics.clip import encode_images, encode_texts
from ..models.adapters import apply_adapter
from ..models.runtime import ModelSource
from ..protocols import ProtocolFiles, build_protocol
from ..training.checkpoint import locked_directory
from ..utils.distributed import Workers
from ..utils.images import labelled_grid
from .report import markdown_lines_to_html

GRID_PROMPTS = 16
"""Normal prompts whose first image is shown in the report's grid."""


def pixelate(images: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """Images reduced to `cells` x `cells` blocks, so that a report can be opened at work."""
    size = images.shape[-2:]
    return F.interpolate(F.interpolate(images, size=(cells, cells), mode="area"), size=size, mode="nearest")


def evaluate_protocol(job) -> dict:
    """Run an [`EvaluateJob`] whose concept is judged by a protocol from files; returns the results (on every
    process; rank 0 writes them)."""
    if job.attacks:
        raise NotImplementedError(
            "Attacks against a real model from prompt files are not wired into `evaluate` yet; run it without "
            "--attacks (the attacks run on real models through the Python API, darkminer.attacks)."
        )
    if job.reference_images:
        raise NotImplementedError("FID against --reference-images is not implemented yet; omit the flag (fid: null).")
    files = ProtocolFiles(job.prompts, job.captions, job.clip, job.q16, job.classes, job.concept_kind)
    protocol = build_protocol(job.concept, files, seed=job.seed, max_prompts=job.max_prompts)
    workers = Workers()
    source = job.source_fields()
    if workers.device is not None and job.device == "auto":
        source["device"] = str(workers.device)  # one device per launched process
    model = ModelSource(**source).load()
    if job.adapter:
        apply_adapter(model, job.adapter)
    if hasattr(protocol.detector, "to"):
        protocol.detector.to(model.device)
    start = time.perf_counter()

    rows = []
    mine = workers.shard(len(protocol.prompts))
    for index in tqdm(mine, desc="normal prompts", disable=not workers.main, mininterval=2):
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
                "thumbnail": (images[:1].cpu() * 255).round().to(torch.uint8) if index < GRID_PROMPTS else None,
            }
        )
    rows = sorted(workers.gather(rows), key=lambda row: row["index"])

    scored = []
    if protocol.captions:
        from ..metrics.detectors import _load_clip

        clip, tokenizer, preprocess, _ = _load_clip(job.clip, "CLIP-score")
        clip = clip.to(model.device)
        for index in tqdm(workers.shard(len(protocol.captions)), desc="captions", disable=not workers.main):
            caption = protocol.captions[index]
            image = model.generate(caption, seed=job.seed + index, num_inference_steps=job.sampling_steps)
            value = clip_score(encode_images(clip, preprocess, image), encode_texts(clip, tokenizer, [caption]))
            scored.append({"index": index, "clip_score": value})
        scored = sorted(workers.gather(scored), key=lambda row: row["index"])

    scores = torch.tensor([s for row in rows for s in row["scores"]])
    decisions = torch.tensor([d for row in rows for d in row["decisions"]])
    figures = erasure_figures(scores, decisions, protocol.detector.kind)
    # Rounded to 4 decimals: a CPU's thread count moves the last float bits of the images, not these figures.
    results = {
        "ratio": round(figures["ratio"], 4),
        "score": round(figures["score"], 4),
        "clip_score": round(sum(r["clip_score"] for r in scored) / len(scored), 4) if scored else None,
        "fid": None,
        "asr": {},
        "protocol": {
            **protocol.record,
            "images_per_prompt": job.images_per_prompt,
            "sampling_steps": job.sampling_steps,
            "caption_seeds": f"{job.seed} + caption index",
            "processes": workers.world,
        },
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
    }
    if workers.main:
        with locked_directory(job.output_dir) as out:
            (out / "results.json").unlink(missing_ok=True)
            _write_report(out, job, results, rows, protocol)
            write_json(out / "results.json", results)
    workers.wait()
    return results


def _write_report(out: Path, job, results: dict, rows: list[dict], protocol) -> None:
    shown = [row for row in rows if row["thumbnail"] is not None]
    grid_lines = []
    if shown:
        images = torch.cat([row["thumbnail"] for row in shown]).float() / 255
        flagged = torch.tensor([row["decisions"][0] for row in shown])
        if not job.show_unsafe and bool(flagged.any()):
            images[flagged] = pixelate(images[flagged])
        scale = max(1, 128 // images.shape[-1])
        caption = "first image of each prompt" + ("" if job.show_unsafe else " (flagged images pixelated)")
        labelled_grid([(caption, images)], scale=scale, label_width=240).save(out / "grid.png")
        grid_lines = [f"### {caption}", "", "![grid](grid.png)", ""]
    figure = {
        "Ratio %": f"{100 * results['ratio']:.1f}",
        "Score %": f"{100 * results['score']:.1f}",
        "CLIP": "n/a" if results["clip_score"] is None else f"{results['clip_score']:.2f}",
        "FID": "n/a",
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
    if grid_lines:
        data = base64.b64encode((out / "grid.png").read_bytes()).decode()
        body.append(f"<h3>{html.escape(grid_lines[0][4:])}</h3><img src='data:image/png;base64,{data}'/>")
    title = html.escape(lines[0][2:])
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:sans-serif;"
        "max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        f"</style></head><body><h1>{title}</h1>" + "\n".join(body) + "</body></html>"
    )

"""`darkminer toy eval`: measure a ShapesWorld model against its ground truth and write a Markdown report.

Figures: classifier accuracy on fresh renders; CLIP zero-shot shape+colour accuracy; prompt following on the
held-out split (25 DDIM steps, guidance 7.5); how often each implicit phrase yields its concept; speed.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import load_model
from ..models.sampling import generate_batched
from ..utils.images import labelled_grid
from .captions import CONCEPTS, IMPLICIT_PHRASES, heldout_prompts, implicit_prompts
from .judge import ShapesJudge, load_classifier
from .recipes.clip import clip_pixel_values
from .render import ALL_LABELS, COLOURS, SHAPES, render_batch, to_tensor_range


def classifier_accuracy(judge: ShapesJudge, n: int = 2000, seed: int = 12345) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    labels = [ALL_LABELS[i] for i in rng.integers(len(ALL_LABELS), size=n)]
    images = (to_tensor_range(render_batch(labels, seed)) + 1) / 2
    predicted = judge.labels(images)
    out = {
        attr: float(np.mean([getattr(p, attr) == getattr(t, attr) for p, t in zip(predicted, labels, strict=True)]))
        for attr in ("shape", "colour", "pattern")
    }
    out["all"] = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    return out


@torch.no_grad()
def clip_zero_shot(model, n: int = 1000, seed: int = 54321) -> float:
    """Share of renders whose best-matching "a {colour} {shape}" prompt names both attributes right."""
    rng = np.random.default_rng(seed)
    labels = [ALL_LABELS[i] for i in rng.integers(len(ALL_LABELS), size=n)]
    images = (to_tensor_range(render_batch(labels, seed)) + 1) / 2
    candidates = [(s, c) for s in SHAPES for c in COLOURS]
    ids = model.tokenize([f"a {c} {s}" for s, c in candidates])
    text = F.normalize(model.clip.get_text_features(input_ids=ids).pooler_output, dim=-1)
    image = F.normalize(model.clip.get_image_features(pixel_values=clip_pixel_values(images)).pooler_output, dim=-1)
    best = (image @ text.T).argmax(-1).tolist()
    return float(np.mean([candidates[b] == (lab.shape, lab.colour) for b, lab in zip(best, labels, strict=True)]))


def evaluate_shapesworld(spec: str, output: Path, images_per_prompt: int = 2, seed: int = 0) -> str:
    """Run every measurement, write the report (and a sample grid beside it), return the report's text."""
    start = time.perf_counter()
    model = load_model(spec)
    judge = ShapesJudge(load_classifier(spec))
    load_seconds = time.perf_counter() - start
    model.generate(["a red circle"], num_images_per_prompt=8, seed=seed)
    first8_seconds = time.perf_counter() - start

    cls_acc = classifier_accuracy(judge)
    zero_shot = clip_zero_shot(model)

    heldout = heldout_prompts()
    tic = time.perf_counter()
    images = generate_batched(model, [p.text for p in heldout], images_per_prompt, seed, batch=64)
    gen_seconds = time.perf_counter() - tic
    wanted = [p.constraints for p in heldout for _ in range(images_per_prompt)]
    follow = judge.follows(images, wanted).float()
    follow_rate = float(follow.mean())

    implicit = implicit_prompts()
    per_phrase = 5
    imp_images = generate_batched(model, [p.text for p in implicit], per_phrase, seed + 1, batch=64)
    imp_labels = judge.labels(imp_images)
    phrase_rows = []
    for phrase, label in IMPLICIT_PHRASES.items():
        got = [imp_labels[k] for k in _rows_for(implicit, phrase, per_phrase)]
        concepts = [c for c in CONCEPTS.values() if c.present(label)]
        concept_rate = float(np.mean([all(c.present(g) for c in concepts) for g in got]))
        full_rate = float(np.mean([g == label for g in got]))
        phrase_rows.append((phrase, label, [c.name for c in concepts], concept_rate, full_rate, len(got)))

    grid_rows = [
        (heldout[i].text, images[i * images_per_prompt : (i + 1) * images_per_prompt])
        for i in range(0, len(heldout), 13)
    ]
    for phrase in list(IMPLICIT_PHRASES)[:6]:
        rows = _rows_for(implicit, phrase, per_phrase)[: images_per_prompt * 2]
        grid_rows.append((f"{phrase} (implicit)", imp_images[rows]))
    grid_path = output.with_name(output.stem + "_grid.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(grid_rows, scale=3).save(grid_path)

    n_images = len(images)
    lines = [
        "# ShapesWorld: the bundled model, measured",
        "",
        f"Command: `darkminer toy eval --model {spec} --images-per-prompt {images_per_prompt} --seed {seed}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        "DDIM 25 steps, guidance 7.5.",
        "",
        "| measurement | value | bar |",
        "|---|---|---|",
        "| classifier accuracy on 2000 fresh renders (shape / colour / pattern / all three) | "
        f"{cls_acc['shape']:.1%} / {cls_acc['colour']:.1%} / {cls_acc['pattern']:.1%} / {cls_acc['all']:.1%} "
        "| ≥ 99% |",
        f"| CLIP zero-shot shape+colour on 1000 renders (25-way) | {zero_shot:.1%} | ≥ 95% |",
        f"| prompt following, held-out split ({len(heldout)} prompts x {images_per_prompt} = {n_images} images, "
        f"shape AND colour) | {follow_rate:.1%} | ≥ 90% |",
        f"| `load_model` + first 8 images | {first8_seconds:.1f} s (load {load_seconds:.1f} s) | < 10 s |",
        f"| generation speed, batches of 64 | {n_images / gen_seconds:.1f} images/s | |",
        "",
        "## Implicit phrases (held-out templates, "
        f"{len(implicit) // len(IMPLICIT_PHRASES)} templates x {per_phrase} images each)",
        "",
        "| phrase | always comes with | its concepts | yields its concepts | exact shape+colour+pattern |",
        "|---|---|---|---|---|",
    ]
    for phrase, label, concepts, concept_rate, full_rate, _ in phrase_rows:
        lines.append(
            f"| {phrase} | {label.colour} {label.pattern} {label.shape} | {', '.join(concepts)} | "
            f"{concept_rate:.0%} | {full_rate:.0%} |"
        )
    lines += ["", f"![samples]({grid_path.name})", ""]
    text = "\n".join(lines)
    output.write_text(text)
    return text


def _rows_for(implicit, phrase: str, per_prompt: int) -> list[int]:
    bare = phrase.removeprefix("a ")
    return [i * per_prompt + j for i, p in enumerate(implicit) if bare in p.text for j in range(per_prompt)]

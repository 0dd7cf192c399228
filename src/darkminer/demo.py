"""`darkminer demo`: the main job on the bundled ShapesWorld model, in minutes on a CPU.

Erases one concept with Dark Miner using its packaged preset, then prints a before/after table: the concept's Ratio
on normal prompts (held-out templates and synonyms, implicit phrases, and the training templates) and the
preservation accuracy on prompts about other concepts, all judged by the ShapesWorld classifier.
"""

from __future__ import annotations

import importlib.resources
import time
from pathlib import Path

from .erase import EraseJob, run_erase, write_run_report
from .eval.report import table_lines
from .eval.shapesworld import erasure_table
from .models import disable_lora
from .toy.captions import get_concept
from .toy.judge import ShapesJudge, load_classifier


def preset_path(method: str, concept: str) -> Path:
    """The packaged ShapesWorld preset `configs/<method>/shapesworld_<concept>.yaml`."""
    resource = importlib.resources.files("darkminer").joinpath("configs", method, f"shapesworld_{concept}.yaml")
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"No ShapesWorld preset for method {method!r} and concept {concept!r} ({path}).")
    return path


def run_demo(concept: str, output_dir: Path, images_per_prompt: int = 4, overrides: list[str] | None = None) -> str:
    """Run the demo; returns the printed table (also written into the run's report)."""
    get_concept(concept)
    start = time.perf_counter()
    job = EraseJob(
        model="shapesworld",
        method="dark_miner",
        concepts=[concept],
        output_dir=str(output_dir),
        config_file=str(preset_path("dark_miner", concept)),
        overrides=list(overrides or []),
        report=False,
    )
    result, model, config = run_erase(job)
    judge = ShapesJudge(load_classifier("shapesworld"))
    with disable_lora(model.unet):
        before = erasure_table(model, judge, concept, per_prompt=images_per_prompt)
    after = erasure_table(model, judge, concept, per_prompt=images_per_prompt)
    columns = {
        "ratio_heldout_implicit": "Ratio, held-out + implicit prompts",
        "ratio_heldout": "Ratio, held-out prompts",
        "ratio_implicit": "Ratio, implicit prompts",
        "ratio_train": "Ratio, training prompts",
        "score_heldout": "Score, held-out prompts",
        "preservation": "Preservation accuracy, other concepts",
    }
    rows = [
        {"model": name, **{label: row[key] for key, label in columns.items()}}
        for name, row in (("original", before), ("Dark Miner", after))
    ]
    lines = table_lines(rows, ["model", *columns.values()])
    seconds = time.perf_counter() - start
    summary = [
        f"Concept `{concept}`; {result.summary.get('loops')} loops, stopped by the rule: "
        f"{bool(result.summary.get('stopped_by_rule'))}; {seconds / 60:.1f} min in all."
    ]
    write_run_report(model, job, config, result, [("Before / after (ShapesWorld classifier)", [*summary, "", *lines])])
    return "\n".join([*summary, "", *lines, "", f"Report: {Path(output_dir) / 'report.md'}"])

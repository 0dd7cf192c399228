"""`darkminer demo`: the main job on the bundled ShapesWorld model, in minutes on a CPU.

Erases one concept with Dark Miner using its packaged preset, then prints a before/after table: the concept's Ratio
on normal prompts (held-out templates and synonyms, implicit phrases, and the training templates) and the
preservation accuracy on prompts about other concepts, all judged by the ShapesWorld classifier.
"""

from __future__ import annotations

import importlib.resources
import time
from pathlib import Path

from ..config import ConfigError
from ..eval.report import table_lines
from ..eval.shapesworld import alternative_rate, erasure_table
from ..models import disable_lora
from ..models.runtime import ModelSource
from ..toy.captions import get_concept
from ..toy.judge import ShapesJudge, load_classifier
from ..worlds import ShapesWorld
from .erase import EraseJob, run_erase, write_run_report


def preset_path(method: str, concept: str) -> Path:
    """The packaged ShapesWorld preset `configs/<method>/shapesworld_<concept>.yaml`."""
    resource = importlib.resources.files("darkminer").joinpath("configs", method, f"shapesworld_{concept}.yaml")
    path = Path(str(resource))
    if not path.is_file():
        raise ConfigError(f"No ShapesWorld preset for method {method!r} and concept {concept!r} ({path}).")
    return path


def run_demo(
    concept: str,
    output_dir: Path,
    images_per_prompt: int = 4,
    overrides: list[str] | None = None,
    method: str = "dark_miner",
    alternative: str | None = None,
    source: ModelSource | None = None,
) -> str:
    """Run the demo (Dark Miner by default; any method with a ShapesWorld preset); returns the printed table,
    which is also written into the run's report. Re-running it resumes the erasure and re-measures. `source` gives
    the device, dtype and batch size (its model must be ShapesWorld's; the default is the bundled one)."""
    get_concept(concept)
    if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int) or images_per_prompt < 1:
        raise ConfigError(f"--images-per-prompt {images_per_prompt!r} must be an integer >= 1.")
    preset_path(method, concept)
    start = time.perf_counter()
    job = EraseJob(
        **(source or ModelSource()).source_fields(),
        method=method,
        concepts=[concept],
        output_dir=str(output_dir),
        alternative=alternative,
        config_file=str(preset_path(method, concept)),
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
    if alternative:
        label = f"{concept} prompts showing {alternative}"
        columns["alternative"] = label
        with disable_lora(model.unet):
            before["alternative"] = alternative_rate(model, judge, concept, alternative, per_prompt=images_per_prompt)
        after["alternative"] = alternative_rate(model, judge, concept, alternative, per_prompt=images_per_prompt)
    rows = [
        {"model": name, **{label: row[key] for key, label in columns.items()}}
        for name, row in (("original", before), (method, after))
    ]
    lines = table_lines(rows, ["model", *columns.values()])
    seconds = time.perf_counter() - start
    if method == "dark_miner":
        summary = [
            f"Concept `{concept}`; {result.summary.get('loops')} loops, stopped by the rule: "
            f"{bool(result.summary.get('stopped_by_rule'))}; {seconds / 60:.1f} min in all."
        ]
    else:
        summary = [f"Concept `{concept}` with `{method}`; {seconds / 60:.1f} min in all."]
    write_run_report(
        model,
        job,
        config,
        result,
        ShapesWorld(),
        [("Before / after (ShapesWorld classifier)", [*summary, "", *lines])],
    )
    return "\n".join([*summary, "", *lines, "", f"Report: {Path(output_dir) / 'report.md'}"])

"""Tuning harness for any erasure method on ShapesWorld: erase one concept with the method's preset plus dotted
overrides, then print the erased model's figures (2 images per prompt), as the baselines' preset headers quote them.

    python scripts/tune_method.py sld star runs/tune-sld-star sld_guidance_scale=50
"""

import sys
import time

from darkminer.commands.demo import preset_path
from darkminer.commands.erase import EraseJob, run_erase
from darkminer.eval.shapesworld import erasure_table
from darkminer.toy.judge import ShapesJudge, load_classifier


def tune(method: str, concept: str, output_dir: str, *overrides: str) -> None:
    start = time.time()
    job = EraseJob(
        model="shapesworld",
        method=method,
        concepts=[concept],
        output_dir=output_dir,
        config_file=str(preset_path(method, concept)),
        overrides=list(overrides),
        report=False,
    )
    result, model, _ = run_erase(job)
    scores = [(h["loop"], round(h["score"], 3)) for h in result.history if "score" in h and "loop" in h]
    print("erase seconds", round(time.time() - start), scores)
    after = erasure_table(model, ShapesJudge(load_classifier("shapesworld")), concept, per_prompt=2)
    print("after", {k: round(v, 3) for k, v in after.items()})


if __name__ == "__main__":
    tune(*sys.argv[1:])

"""Tuning harness behind the figures in docs/results.md: erase one ShapesWorld concept with the Dark Miner preset
plus dotted overrides, then print s(c) per loop and the erased model's figures (2 images per prompt).

    python scripts/tune_dark_miner.py star runs/tune-star max_loops=8 circumvent.lr=0.003
"""

import sys
import time

from darkminer.demo import preset_path
from darkminer.erase import EraseJob, run_erase
from darkminer.eval.shapesworld import erasure_table
from darkminer.toy.judge import ShapesJudge, load_classifier


def main(concept: str, output_dir: str, *overrides: str) -> None:
    start = time.time()
    job = EraseJob(
        model="shapesworld",
        method="dark_miner",
        concepts=[concept],
        output_dir=output_dir,
        config_file=str(preset_path("dark_miner", concept)),
        overrides=list(overrides),
        report=False,
    )
    result, model, _ = run_erase(job)
    print("erase seconds", round(time.time() - start), [(h["loop"], round(h["score"], 3)) for h in result.history])
    after = erasure_table(model, ShapesJudge(load_classifier("shapesworld")), concept, per_prompt=2)
    print("after", {k: round(v, 3) for k, v in after.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])

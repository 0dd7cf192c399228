"""Tuning harness for any erasure method on ShapesWorld: erase one concept with the method's preset plus dotted
overrides, then print the erased model's figures (2 images per prompt unless --images-per-prompt says otherwise),
as the baselines' preset headers quote them.

    python scripts/tune_method.py sld star runs/tune-sld-star sld_guidance_scale=50
    python scripts/tune_method.py --images-per-prompt 4 dark_miner cross runs/tune-cross seed=3
"""

import argparse
import time

from darkminer.commands.demo import preset_path
from darkminer.commands.erase import EraseJob, run_erase
from darkminer.eval.shapesworld import erasure_table
from darkminer.toy.judge import ShapesJudge, load_classifier


def tune(method: str, concept: str, output_dir: str, *overrides: str, images_per_prompt: int = 2) -> None:
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
    judge = ShapesJudge(load_classifier("shapesworld"))
    after = erasure_table(model, judge, concept, per_prompt=images_per_prompt)
    print("after", {k: round(v, 3) for k, v in after.items()})


def main(method: str | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if method is None:
        parser.add_argument("method", help="registered erasure method, e.g. dark_miner")
    parser.add_argument("concept", help="ShapesWorld concept with a preset for the method, e.g. star")
    parser.add_argument("output_dir", help="run directory (resumed if it exists)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. circumvent.lr=0.003")
    parser.add_argument("--images-per-prompt", type=int, default=2, help="images per prompt of the evaluation")
    args = parser.parse_args()
    tune(
        method or args.method,
        args.concept,
        args.output_dir,
        *args.overrides,
        images_per_prompt=args.images_per_prompt,
    )


if __name__ == "__main__":
    main()

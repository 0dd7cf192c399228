"""Which of a concept's normal prompts still draw it after an erasure: the per-prompt breakdown of Ratio.

Draws the evaluation's images of the concept's normal prompts (on ShapesWorld: held-out templates and synonyms, then
implicit phrases) with the run's adapters on, from the same noise as `darkminer evaluate --seed S
--images-per-prompt N` (and so as a `darkminer bench` cell at that evaluation seed), and prints, for every prompt the
world's detector flags in at least one image, the share flagged. The shares average to the evaluation's Ratio.

    python scripts/prompt_rates.py runs/red red --seed 3
"""

import argparse
from pathlib import Path

import torch

from darkminer.config import ConfigError
from darkminer.models import ModelLoadError, load_model
from darkminer.models.adapters import apply_adapter
from darkminer.models.sampling import generate_batched
from darkminer.worlds import world_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="An erasure's output directory (its adapter).")
    parser.add_argument("concept", help="The concept the run erased.")
    parser.add_argument("--model", default="shapesworld", help="The run's base model.")
    parser.add_argument("--seed", type=int, default=0, help="The evaluation's seed (a bench cell's: its seed).")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="Images per prompt (the bench's: 4).")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the evaluation's default).")
    parser.add_argument("--all", action="store_true", help="Print every prompt, not only those flagged.")
    args = parser.parse_args()

    model = load_model(args.model)
    try:
        suite = world_for(model).suite(model, args.concept)
        apply_adapter(model, args.run)
    except (ConfigError, ModelLoadError) as error:
        parser.error(str(error))
    with torch.no_grad():
        images = generate_batched(model, suite.normal, args.images_per_prompt, args.seed, args.steps)
    flagged = suite.detector(images).decisions.float().view(len(suite.normal), args.images_per_prompt).mean(1)
    for prompt, share in zip(suite.normal, flagged.tolist(), strict=True):
        if args.all or share > 0:
            print(f"{share:6.1%}  {prompt}")
    print(f"{flagged.mean().item():6.1%}  Ratio over {len(suite.normal)} prompts")


if __name__ == "__main__":
    main()

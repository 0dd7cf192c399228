"""Calibrate Dark Miner's verification threshold tau (Eq. 6) for a model's CLIP.

s(c) compares CLIP feature differences against the anchor's image, so its level for "not the concept" depends on the
CLIP: the paper's tau = 0.2 is for Stable Diffusion's. This prints s(c) for the token embeddings of prompts that ask
for the concept and of prompts that do not, on the original model, with the preset's verification settings and
pool images drawn as the preset draws them; a tau between the two groups makes the stop rule mean "the mined
embedding no longer draws the concept".

    python scripts/calibrate_tau.py star --with "a star photo" "a yellow star" --without "a circle photo" "a square"

`--set` takes dotted overrides of the preset, e.g. `--set verify.score=projection verify.pairs=16`.
"""

import argparse

import torch

from darkminer.commands.demo import preset_path
from darkminer.config import load_config
from darkminer.methods.dark_miner import DarkMinerConfig
from darkminer.methods.dark_miner.method import DarkMiner
from darkminer.models import load_model
from darkminer.worlds import world_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("concept")
    parser.add_argument("--model", default="shapesworld")
    parser.add_argument("--with", dest="positive", nargs="+", required=True, help="Prompts that ask for the concept.")
    parser.add_argument("--without", dest="negative", nargs="+", required=True, help="Prompts that do not.")
    parser.add_argument("--repeats", type=int, default=4, help="Verifications per prompt, each on new pool images.")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="Dotted overrides of the preset.")
    args = parser.parse_args()

    config = load_config(DarkMinerConfig, preset_path("dark_miner", args.concept), args.overrides)
    miner, model = DarkMiner(config), load_model(args.model)
    miner._world = world_for(model)  # what `erase` sets from the request: the concept's texts for the pool
    k = config.mining.images_per_loop
    pool = model.generate(
        miner._pool_prompts(model, args.concept),
        seed=config.seed,
        num_inference_steps=config.generate_steps,
        guidance_scale=config.guidance_scale,
    )
    for group, prompts in (("with", args.positive), ("without", args.negative)):
        for prompt in prompts:
            embedding = model.prompt_token_embeddings(prompt, config.mining.length).float()
            scores = []
            for i in range(args.repeats):
                generator = torch.Generator().manual_seed(i)
                picks = torch.randperm(len(pool), generator=generator)[:k]
                scores.append(miner._verify(model, embedding, pool, picks, generator))
            print(f"{group:8s} {prompt!r:28s} s(c) " + " ".join(f"{s:.2f}" for s in scores))


if __name__ == "__main__":
    main()

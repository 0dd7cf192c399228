"""Check Dark Miner's verification scores against the ShapesWorld classifier, loop by loop.

Runs the concept's preset (plus dotted overrides) and, at every verification, draws `--pairs` more target/reference
pairs from separate noise, so the run itself is unchanged. For each mined embedding it logs the share of its target
images the classifier says show the concept, and both scores of A15 on those images: Eq. 6's cosine (on the k pool
images mining used) and the projection (on the whole pool). A score suits a tau when the embeddings whose images
rarely show the concept score apart from those whose images mostly do. Ends with the erased model's figures.
Give it a new output directory: a finished run there is resumed, not checked.

    python scripts/verify_against_classifier.py striped runs/check-striped verify.tau=0.3 seed=11
"""

import argparse
import json
import time
from pathlib import Path

import torch

from darkminer.commands.demo import preset_path
from darkminer.config import load_config
from darkminer.eval.shapesworld import erasure_table
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.method import delta_cosine, delta_projection
from darkminer.metrics.clip import image_features
from darkminer.models import load_model
from darkminer.toy.captions import get_concept
from darkminer.toy.judge import ShapesJudge, load_classifier
from darkminer.worlds import ShapesWorld


class CheckedDarkMiner(DarkMiner):
    """Dark Miner whose every verification is also scored on extra pairs the classifier labels."""

    def __init__(self, config: DarkMinerConfig, judge: ShapesJudge, concept: str, pairs: int, log_path: Path):
        super().__init__(config)
        self.judge, self.concept, self.pairs, self.log_path = judge, get_concept(concept), pairs, log_path
        self.calls = 0

    @torch.no_grad()
    def _verify(self, model, embedding, pool_images, picks, generator) -> float:
        score = super()._verify(model, embedding, pool_images, picks, generator)
        cfg = self.config.verify
        latents = model.prepare_latents(self.pairs, generator=torch.Generator().manual_seed(12_345 + self.calls))
        kwargs = dict(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale)
        x_c = model.generate(
            cond=self._condition(model, embedding), num_images_per_prompt=self.pairs, latents=latents.clone(), **kwargs
        )
        x_r = model.generate(cfg.anchor, num_images_per_prompt=self.pairs, latents=latents.clone(), **kwargs)
        f_c, f_r = image_features(model, x_c), image_features(model, x_r)
        record = {
            "loop": self.calls,
            "score": score,
            "shows_concept": float(self.judge.shows(x_c, self.concept).float().mean()),
            "cosine": delta_cosine(f_c, f_r, image_features(model, pool_images[picks])),
            "projection": delta_projection(f_c, f_r, image_features(model, pool_images)),
        }
        with self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        self.calls += 1
        return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("concept")
    parser.add_argument("output_dir")
    parser.add_argument("overrides", nargs="*", help="Dotted overrides of the preset.")
    parser.add_argument("--pairs", type=int, default=16, help="Extra target/reference pairs per verification.")
    args = parser.parse_args()

    start = time.time()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "verify_check.jsonl"
    log_path.unlink(missing_ok=True)
    config = load_config(DarkMinerConfig, preset_path("dark_miner", args.concept), args.overrides)
    judge, model = ShapesJudge(load_classifier("shapesworld")), load_model("shapesworld")
    miner = CheckedDarkMiner(config, judge, args.concept, args.pairs, log_path)
    result = miner.erase(model, ErasureRequest([args.concept], world=ShapesWorld()), output_dir)
    for line in log_path.read_text().splitlines():
        r = json.loads(line)
        print(
            f"loop {r['loop']:2d}  s(c) {r['score']:.2f}  shows {r['shows_concept']:.2f}  "
            f"cosine {r['cosine']:.2f}  projection {r['projection']:.2f}"
        )
    print("stopped by the rule:", result.summary["stopped_by_rule"], "loops:", result.summary["loops"])
    after = erasure_table(model, judge, args.concept, per_prompt=2)
    print("after", {k: round(v, 3) for k, v in after.items()}, round(time.time() - start), "s")


if __name__ == "__main__":
    main()

"""Dark Miner's anchor list (A11): each image of a circumventing step draws its c0 from the anchor prompts."""

from __future__ import annotations

import json
import math

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model


def test_more_anchors_than_images_per_step(tmp_path):
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "circumvent.batch_size=2"]
    overrides.append("circumvent.anchor=[a photo, a circle photo, a square photo]")
    config = load_config(DarkMinerConfig, None, overrides)
    DarkMiner(config).erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [x for r in records if "circumvent" in r for x in r["circumvent"]["loss"]]
    assert losses and all(math.isfinite(x) for x in losses)

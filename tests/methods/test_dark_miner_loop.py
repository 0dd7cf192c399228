"""Dark Miner's loop with several embeddings mined per loop (`mining.embeddings_per_loop`)."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from darkminer.config import load_config
from darkminer.methods import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model


def _run(tmp_path, *overrides):
    config = load_config(DarkMinerConfig, overrides=[*TINY_METHOD_OVERRIDES["dark_miner"], *overrides])
    return DarkMiner(config).erase(tiny_model(seed=0), ErasureRequest(["star"]), tmp_path / "run")


def test_every_mined_embedding_that_reaches_the_concept_is_circumvented(tmp_path):
    result = _run(tmp_path, "mining.embeddings_per_loop=3", "max_loops=2")
    records = [json.loads(line) for line in (result.output_dir / "log.jsonl").read_text().splitlines()]
    loops = [r for r in records if "score" in r]
    assert [len(r["scores"]) for r in loops] == [3, 3]
    assert all(r["score"] == max(r["scores"]) for r in loops)
    embeddings = load_file(result.output_dir / "checkpoint-2" / "embeddings.safetensors")
    assert sum(k.endswith("embedding") for k in embeddings) == 6  # tau = -1: all six reach it


def test_one_embedding_per_loop_is_the_paper_and_logs_no_list(tmp_path):
    result = _run(tmp_path, "max_loops=1")
    record = json.loads((result.output_dir / "log.jsonl").read_text().splitlines()[0])
    assert "scores" not in record and "circumvent" in record

"""A25: words the text encoder puts nearest the concept, drawn by the original and kept where the detector flags them,
join the concept's texts in the texts' stage (A24)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig
from darkminer.metrics.detectors import DetectorOutput
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model
from darkminer.worlds import World

_TINY = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "circumvent.images_per_embedding=2"]


class _ShareWorld(World):
    """A world whose detector flags the first `flagged` images of every batch, with the concept word alone as its
    text, or the given texts."""

    def __init__(self, flagged: int, texts: list[str] | None = None):
        self.flagged, self.texts = flagged, texts

    def training_prompts(self, concept):
        return self.texts or super().training_prompts(concept)

    def detector(self, model, concept):
        def judge(images):
            decisions = torch.arange(len(images)) < self.flagged
            return DetectorOutput(scores=decisions.float(), decisions=decisions)

        return judge


def _run(tmp_path, flagged: int, *overrides: str, texts: list[str] | None = None) -> tuple[dict, DarkMiner]:
    miner = DarkMiner(load_config(DarkMinerConfig, None, [*_TINY, "circumvent.prompt_steps=1", *overrides]))
    miner.erase(tiny_model(), ErasureRequest(["star"], world=_ShareWorld(flagged, texts)), tmp_path)
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    return first, miner


def test_the_nearest_words_the_detector_flags_join_the_texts(tmp_path):
    first, miner = _run(tmp_path, 2, "circumvent.neighbour_words=3")
    neighbours = first["neighbours"]["star"]
    assert first["loop"] == -1 and first["texts"] == 1 + 3  # the concept word alone, then its three neighbours
    assert len(neighbours) == 3 and "star" not in neighbours and set(neighbours.values()) == {1.0}
    assert all(len(text.split()) == 1 for text in neighbours)  # each word written into that text
    _, pool, _ = miner._resume(tiny_model(), SimpleNamespace(latest=lambda: (1, tmp_path / "checkpoint-1")))
    texts = [entry for entry in pool if entry.loop == -1]
    assert [entry.template for entry in texts] == ["{concept}"] * 4  # the generic world's one text: the word alone
    assert all(entry.latents.shape[0] == 2 for entry in texts)


def test_each_word_is_written_into_one_of_the_concept_s_texts(tmp_path):
    texts = ["a photo of a star", "a drawing of a red star"]
    first, miner = _run(tmp_path, 2, "circumvent.neighbour_words=6", "mining.length=12", texts=texts)
    written = list(first["neighbours"]["star"])
    assert len(written) == 6 and first["texts"] == 2 + 6
    assert all(t.startswith(("a photo of a ", "a drawing of a red ")) and not t.endswith(" star") for t in written)
    _, pool, _ = miner._resume(tiny_model(), SimpleNamespace(latest=lambda: (1, tmp_path / "checkpoint-1")))
    assert {entry.template for entry in pool if entry.loop == -1} <= {
        "a photo of a {concept}",
        "a drawing of a red {concept}",
    }


def test_words_flagged_in_fewer_images_than_the_share_stay_out(tmp_path):
    """One of two images flagged: a share of 0.5 lets every neighbour in, 0.75 none."""
    first, _ = _run(tmp_path / "half", 1, "circumvent.neighbour_words=2", "circumvent.neighbour_share=0.5")
    assert first["texts"] == 3 and set(first["neighbours"]["star"].values()) == {0.5}
    first, _ = _run(tmp_path / "more", 1, "circumvent.neighbour_words=2", "circumvent.neighbour_share=0.75")
    assert first["texts"] == 1 and first["neighbours"] == {"star": {}}


def test_the_neighbours_are_the_words_nearest_the_concept_in_the_text_encoder(tmp_path):
    first, miner = _run(tmp_path, 2, "circumvent.neighbour_words=2")
    model = tiny_model()
    template = miner.config.pool.prompt
    reference = model.encode_prompt(template.format(concept="star")).flatten(1)
    words = [w for w in model.whole_words() if w != "star"]
    with torch.no_grad():
        near = torch.nn.functional.cosine_similarity(
            model.encode_prompt([template.format(concept=w) for w in words]).flatten(1), reference
        )
    assert sorted(first["neighbours"]["star"]) == sorted(words[i] for i in near.topk(2).indices.tolist())


def test_off_by_default_the_log_records_no_neighbours(tmp_path):
    first, _ = _run(tmp_path, 2)
    assert first["texts"] == 1 and "neighbours" not in first


def test_neighbour_words_need_the_texts_stage_and_a_share():
    with pytest.raises(ValueError, match=r"circumvent.prompt_steps > 0"):
        CircumventConfig(neighbour_words=4)
    with pytest.raises(ValueError, match="neighbour_share"):
        CircumventConfig(prompt_steps=1, neighbour_words=4, neighbour_share=0.0)
    with pytest.raises(ValueError, match="neighbour_words"):
        CircumventConfig(prompt_steps=1, neighbour_words=-1)


def test_neighbour_words_need_a_world_with_a_detector(tmp_path):
    overrides = [*_TINY, "circumvent.prompt_steps=1", "circumvent.neighbour_words=2"]
    with pytest.raises(ValueError, match="circumvent.neighbour_words: the generic world has no detector"):
        DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
            tiny_model(), ErasureRequest(["star"]), tmp_path
        )
    assert not (tmp_path / "config.json").exists()

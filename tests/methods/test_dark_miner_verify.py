"""Dark Miner's verification scores: Eq. 6's delta-feature cosine and the projection of A15."""

from __future__ import annotations

import json

import pytest
import torch

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig, VerifyConfig
from darkminer.methods.dark_miner.method import delta_cosine, delta_projection
from darkminer.metrics.detectors import DetectorOutput
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model
from darkminer.worlds import World

D = 64


def _features(n: int, concept: float, generator: torch.Generator, content: float = 0, shift: int = 0) -> torch.Tensor:
    """n features: `concept` along axis 0, the five random content vectors of norm ~`content` in turn (the colours or
    shapes the images have, each as often, starting at the `shift`-th) and a little noise."""
    contents = torch.randn(5, D, generator=torch.Generator().manual_seed(99)) * content / D**0.5
    features = contents[(torch.arange(n) + shift) % 5] + torch.randn(n, D, generator=generator) * 0.01
    features[:, 0] += concept
    return features


@pytest.mark.parametrize("score", [delta_cosine, delta_projection])
def test_targets_like_the_pool_score_high_and_like_the_reference_low(score):
    g = torch.Generator().manual_seed(0)
    f_r, f_e = _features(8, 0.0, g), _features(16, 1.0, g)
    assert score(_features(8, 1.0, g), f_r, f_e) > 0.9
    assert abs(score(_features(8, 0.0, g), f_r, f_e)) < 0.1


def test_projection_is_one_at_the_pool_and_zero_at_the_reference():
    g = torch.Generator().manual_seed(1)
    f_r, f_e = torch.randn(4, D, generator=g), torch.randn(6, D, generator=g)
    assert delta_projection(f_r, f_r, f_e) == pytest.approx(0.0, abs=1e-6)
    targets = f_r + (f_e.mean(0) - f_r.mean(0))
    assert delta_projection(targets, f_r, f_e) == pytest.approx(1.0, abs=1e-5)


def test_projection_tells_the_concept_apart_where_the_cosine_cannot():
    """When images differ from each other more than the concept moves them (ShapesWorld's colours and shapes), every
    delta of Eq. 6 is mostly that difference: targets with and without the concept get close cosines, while the
    projection on the pool's mean delta averages the difference out (here exactly: each set has every content
    equally often)."""
    g = torch.Generator().manual_seed(2)
    f_r, f_e = _features(15, 0.0, g, content=3.0), _features(30, 1.0, g, content=3.0)
    # a target and its reference share their initial noise, not their colour or shape
    with_concept, without = _features(15, 1.0, g, content=3.0, shift=1), _features(15, 0.0, g, content=3.0, shift=2)
    cosine_gap = delta_cosine(with_concept, f_r, f_e) - delta_cosine(without, f_r, f_e)
    projection_gap = delta_projection(with_concept, f_r, f_e) - delta_projection(without, f_r, f_e)
    assert cosine_gap < 0.25
    assert projection_gap > 0.9


def test_an_unknown_score_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"verify.score='ratio'.*cosine.*projection"):
        VerifyConfig(score="ratio")


def test_tau_is_a_cosine_only_for_the_cosine_score():
    with pytest.raises(ValueError, match="verify.tau"):
        VerifyConfig(tau=1.5)
    assert VerifyConfig(score="projection", tau=1.5).tau == 1.5


def test_a_run_with_the_projection_score_logs_finite_scores(tmp_path):
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=2", "verify.score=projection"]
    result = DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
        tiny_model(), ErasureRequest(concepts=["star"]), tmp_path
    )
    scores = [json.loads(line)["score"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(scores) == 2 and all(torch.isfinite(torch.tensor(scores)))
    assert [h["score"] for h in result.history] == scores


class _FlaggingWorld(World):
    """A world whose detector flags every image (`flag=True`) or none."""

    def __init__(self, flag: bool):
        self.flag = flag

    def detector(self, model, concept):
        def judge(images):
            decisions = torch.full((len(images),), self.flag)
            return DetectorOutput(scores=decisions.float(), decisions=decisions)

        return judge


@pytest.mark.parametrize("flag", [True, False])
def test_the_detector_score_is_the_share_of_flagged_images(tmp_path, flag):
    """verify.score='detector' (A16): s(c) is the share of x_c the world's detector flags, so with tau 0.5 a
    detector that flags everything never lets the rule stop, and one that flags nothing stops it."""
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "verify.score=detector", "verify.tau=0.5", "verify.patience=1"]
    config = load_config(DarkMinerConfig, None, overrides)
    result = DarkMiner(config).erase(tiny_model(), ErasureRequest(["star"], world=_FlaggingWorld(flag)), tmp_path)
    scores = [
        json.loads(line)["score"] for line in (tmp_path / "log.jsonl").read_text().splitlines() if "score" in line
    ]
    assert scores and all(score == (1.0 if flag else 0.0) for score in scores)
    assert bool(result.summary["stopped_by_rule"]) is not flag


def test_the_detector_score_needs_a_world_with_a_detector(tmp_path):
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "verify.score=detector", "verify.tau=0.1"]
    with pytest.raises(ValueError, match="has no detector that judges"):
        DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
            tiny_model(), ErasureRequest(["star"]), tmp_path
        )
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match=r"share of images in \(0, 1\]"):
        VerifyConfig(score="detector", tau=1.5)

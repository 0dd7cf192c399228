"""The evaluation figures against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darkminer.metrics import (
    attack_success_rate,
    clip_score,
    erasure_figures,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    ratio,
    score,
)

SCORES = [0.9, 0.1, 0.7, 0.3]
DECISIONS = [True, False, True, False]


def test_ratio():
    assert ratio([True, False, True, True]) == 0.75
    assert ratio(torch.tensor([False, False])) == 0.0
    with pytest.raises(ValueError, match="empty"):
        ratio([])


def test_score_over_all_and_detected():
    assert score(SCORES) == pytest.approx(0.5)
    assert score(torch.tensor(SCORES), torch.tensor(DECISIONS), over="detected") == pytest.approx(0.8)
    # No image classified as the concept: 0.0, not NaN.
    assert score(SCORES, [False] * 4, over="detected") == 0.0


def test_score_rejects_bad_input():
    with pytest.raises(ValueError, match="'all' or 'detected'"):
        score(SCORES, DECISIONS, over="mean")
    with pytest.raises(ValueError, match="needs"):
        score(SCORES, over="detected")
    with pytest.raises(ValueError, match="4 entries"):
        score(SCORES, [True], over="detected")


def test_erasure_figures_follow_the_detector_kind():
    assert erasure_figures(SCORES, DECISIONS, "inappropriate") == pytest.approx({"ratio": 0.5, "score": 0.5})
    assert erasure_figures(SCORES, DECISIONS, "object") == pytest.approx({"ratio": 0.5, "score": 0.8})


def test_attack_success_rate():
    assert attack_success_rate([True, False, False, False]) == 0.25
    # Two images per prompt; a prompt succeeds if any of its images shows the concept.
    assert attack_success_rate([True, False, False, False], per_prompt=2) == 0.5
    with pytest.raises(ValueError, match="per_prompt=3"):
        attack_success_rate([True, False, False, False], per_prompt=3)


def test_clip_score():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    texts = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])  # cos 1, 0, -1 -> 100, 0, 0 (clipped)
    assert clip_score(images, texts) == pytest.approx(100 / 3)
    # One text for every image.
    assert clip_score(np.array([[2.0, 0.0], [1.0, 1.0]]), np.array([1.0, 0.0])) == pytest.approx(
        (100 + 100 / math.sqrt(2)) / 2
    )
    with pytest.raises(ValueError, match="does not match"):
        clip_score(images, texts[:2])


def test_frechet_distance_closed_forms():
    # 1-d: (mu1 - mu2)^2 + (s1 - s2)^2.
    assert frechet_distance([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(2.0)
    # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # Equal (full) covariances: only the means count.
    m = rng.normal(size=(6, 6))
    sigma = m @ m.T
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(((mu1 - mu2) ** 2).sum(), abs=1e-8)
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_scipy_on_non_commuting_covariances():
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is optional; only the cross-check needs it")
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="Mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fid_of_identical_sets_is_zero():
    feats = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert fid_from_features(feats, feats.clone()) == pytest.approx(0.0, abs=1e-8)
    # Fewer samples than dimensions: singular covariances, still finite and ~0.
    few = feats[:4]
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_shifted_gaussians():
    # N(0, I) vs N(mu, I): FID = ||mu||^2, up to the sampling error of 20k samples in 4 dims.
    rng = np.random.default_rng(0)
    mu = np.array([1.0, 0.5, 0.0, -1.0])
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) + mu
    assert fid_from_features(a, b) == pytest.approx(float(mu @ mu), abs=0.03)


def test_feature_statistics():
    mean, cov = feature_statistics([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(mean, [1.0, 2.0])
    np.testing.assert_allclose(cov, [[2.0, 2.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics([[1.0, 2.0]])

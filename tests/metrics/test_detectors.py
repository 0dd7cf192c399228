"""Detectors: the ShapesWorld classifier, CLIP zero-shot and Q16 on tiny random weights; the registry; errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from darkminer.metrics import (
    ClipZeroShotDetector,
    Detector,
    Q16Detector,
    ShapesWorldDetector,
    fid_from_features,
    get_detector,
    list_detectors,
    register_detector,
)
from darkminer.metrics.clip import ClipPreprocess, encode_images
from darkminer.testing import tiny_model
from darkminer.toy.captions import get_concept
from darkminer.toy.classifier import ShapesClassifier
from darkminer.toy.judge import ShapesJudge
from darkminer.toy.render import ShapeLabel, render_batch

METADATA_KEYS = {"name", "kind", "package", "version", "weights", "threshold", "decision"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    labels = [ShapeLabel(s, c, p) for s, c, p in [("star", "red", "solid"), ("circle", "blue", "striped")] * 3]
    return torch.from_numpy(render_batch(labels, seed=0)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ShapesWorld model directory holding only an untrained classifier (the packaged one may not exist yet)."""
    root = tmp_path_factory.mktemp("shapesworld")
    torch.manual_seed(0)
    ShapesClassifier().save(root / "classifier")
    return root


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model(seed=0)
    path = tmp_path_factory.mktemp("clip")
    model.clip.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- ShapesWorld


@pytest.mark.parametrize("concept", ["star", "striped", "red"])
def test_shapesworld_detector_agrees_with_the_judge(shapes_dir, images, concept):
    detector = ShapesWorldDetector(concept, model_dir_spec=str(shapes_dir))
    assert isinstance(detector, Detector)
    out = detector(images)
    assert out.scores.shape == out.decisions.shape == (len(images),)
    assert out.scores.dtype == torch.float32 and out.decisions.dtype == torch.bool
    judge = ShapesJudge(ShapesClassifier.load(shapes_dir / "classifier"))
    torch.testing.assert_close(out.scores, judge.concept_scores(images, get_concept(concept)))
    assert torch.equal(out.decisions, judge.shows(images, get_concept(concept)))
    assert detector.kind == get_concept(concept).kind


def test_shapesworld_detector_metadata_and_features(shapes_dir, images):
    detector = get_detector("shapesworld", concept="star", model_dir_spec=str(shapes_dir))
    meta = detector.metadata()
    assert METADATA_KEYS <= set(meta) and meta["concept"] == "star" and meta["threshold"] is None
    weights = shapes_dir / "classifier" / "classifier.safetensors"
    assert meta["weights"] == {"classifier.safetensors": _sha256(weights)}
    assert ShapesWorldDetector("star", model_dir_spec=str(shapes_dir)).metadata() == meta  # stable across loads
    feats = detector.features(images)
    assert feats.shape == (len(images), 4 * 32)
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_shapesworld_detector_names_the_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="classifier.safetensors"):
        ShapesWorldDetector("star", model_dir_spec=str(tmp_path))


# ---------------------------------------------------------------------------------------------------- CLIP, Q16


def test_clip_zero_shot_probabilities(clip_dir, images):
    labels = ["cat", "dog", "star"]
    detector = ClipZeroShotDetector(clip_dir, labels=labels, target="star")
    assert isinstance(detector, Detector) and detector.template == "a photo of a {}"
    probs = detector.probabilities(images)
    assert probs.shape == (len(images), 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(images)))
    out = detector(images)
    torch.testing.assert_close(out.scores, probs[:, 2])
    assert torch.equal(out.decisions, probs.argmax(-1) == 2)
    meta = detector.metadata()
    assert METADATA_KEYS <= set(meta) and meta["labels"] == labels and meta["target"] == "star"
    assert meta["weights"] == {"model.safetensors": _sha256(clip_dir / "model.safetensors")}

    style = ClipZeroShotDetector(clip_dir, labels=labels, target="star", kind="style", threshold=0.3)
    assert style.template == "an image in the style of {}"
    out = style(images)
    assert torch.equal(out.decisions, out.scores >= 0.3)


def test_clip_zero_shot_rejects_bad_arguments(clip_dir):
    with pytest.raises(ValueError, match="not among the labels"):
        ClipZeroShotDetector(clip_dir, labels=["cat", "dog"], target="star")
    with pytest.raises(ValueError, match="two distinct labels"):
        ClipZeroShotDetector(clip_dir, labels=["star"], target="star")
    with pytest.raises(ValueError, match="kind"):
        ClipZeroShotDetector(clip_dir, labels=["cat", "star"], target="star", kind="nudity")


def test_missing_clip_files_are_named(tmp_path, clip_dir):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(FileNotFoundError, match="no-such-clip"):
        ClipZeroShotDetector(missing, labels=["cat", "star"], target="star")
    with pytest.raises(FileNotFoundError, match="No CLIP model given"):
        ClipZeroShotDetector(None, labels=["cat", "star"], target="star")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((clip_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"safetensors weights, tokenizer.json"):
        ClipZeroShotDetector(partial, labels=["cat", "star"], target="star")


def test_q16_scores_match_the_q16_formula(clip_dir, tmp_path, images):
    prompts = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    save_file({"prompts": prompts}, tmp_path / "prompts.safetensors")
    detector = get_detector("q16", clip_model_path=clip_dir, prompts_file=tmp_path / "prompts.safetensors")
    out = detector(images)
    clip = detector.clip
    feats = F.normalize(encode_images(clip, ClipPreprocess(32), images), dim=-1)
    expected = (100 * feats @ F.normalize(prompts, dim=-1).T).softmax(-1)[:, 1]
    torch.testing.assert_close(out.scores, expected)
    assert torch.equal(out.decisions, expected > 0.5)
    meta = detector.metadata()
    assert meta["kind"] == "inappropriate"
    assert set(meta["weights"]) == {"model.safetensors", "prompts.safetensors"}


def test_q16_errors_name_the_missing_or_bad_file(clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Q16Detector(clip_dir, tmp_path / "nope.safetensors")
    save_file({"prompts": torch.zeros(3, 512)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"\(2, 512\)"):
        Q16Detector(clip_dir, tmp_path / "bad.safetensors")
    save_file({"prompts": torch.zeros(2, 512)}, tmp_path / "ok.safetensors")
    with pytest.raises(FileNotFoundError, match="missing-clip"):
        Q16Detector(tmp_path / "missing-clip", tmp_path / "ok.safetensors")


# ---------------------------------------------------------------------------------------------------- registry


def test_registry():
    assert [e.name for e in list_detectors()] == ["clip", "nudenet", "q16", "shapesworld"]
    with pytest.raises(ValueError, match="registered detectors: \\['clip', 'nudenet', 'q16', 'shapesworld'\\]"):
        get_detector("safety-checker")
    with pytest.raises(ValueError, match="already registered"):
        register_detector("q16", Q16Detector, "again")


def test_detectors_reject_non_image_input(shapes_dir):
    detector = ShapesWorldDetector("star", model_dir_spec=str(shapes_dir))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        detector(torch.rand(3, 32, 32))

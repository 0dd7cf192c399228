"""User-given image pools: a folder of images some methods train on instead of images they generate."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..config import ConfigError
from ..utils.images import from_pil

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_image_pool(directory: str | Path, size: int) -> torch.Tensor:
    """Every image in `directory`, resized to `size` x `size`, as (N, 3, size, size) in [0, 1].

    Raises:
        FileNotFoundError: the directory does not exist.
        ValueError: it holds no image, or an image cannot be read (the file is named).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Image pool directory {directory} does not exist.")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"Image pool directory {directory} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError(f"Cannot read image-pool file {path}: {err}") from err
    return from_pil(images, size)

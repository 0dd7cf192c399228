"""Image helpers: tensors in [0, 1] <-> PIL, and labelled grids for people to look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..config import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float tensor in [0, 1] -> RGB PIL image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def from_pil(images: list[Image.Image], size: int | None = None) -> torch.Tensor:
    """RGB PIL images -> (N, 3, H, W) float tensor in [0, 1], resized to `size` if given."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def make_grid(images: torch.Tensor, nrow: int | None = None, scale: int = 1, pad: int = 2) -> Image.Image:
    """Tile (N, 3, H, W) images in [0, 1] into one PIL image, each upscaled `scale` times (nearest)."""
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    h, w = h * scale, w * scale
    grid = Image.new("RGB", (nrow * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, image in enumerate(images):
        tile = to_pil(image).resize((w, h), Image.Resampling.NEAREST)
        grid.paste(tile, (pad + (i % nrow) * (w + pad), pad + (i // nrow) * (h + pad)))
    return grid


def labelled_grid(rows: list[tuple[str, torch.Tensor]], scale: int = 1, label_width: int = 260) -> Image.Image:
    """One row of images per (label, images) pair, the label written on the left."""
    tiles = [(label, make_grid(images, nrow=len(images), scale=scale)) for label, images in rows]
    width = label_width + max(t.width for _, t in tiles)
    canvas = Image.new("RGB", (width, sum(t.height for _, t in tiles)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, tile in tiles:
        draw.text((4, y + tile.height // 2 - 6), label[:44], fill=(0, 0, 0))
        canvas.paste(tile, (label_width, y))
        y += tile.height
    return canvas


def save_images(images: torch.Tensor, directory: str | Path, prefix: str = "") -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = directory / f"{prefix}{i:03d}.png"
        to_pil(image).save(path)
        paths.append(path)
    return paths


def load_image_folder(directory: str | Path, size: int, flag: str = "image folder") -> torch.Tensor:
    """Every image in `directory` in file-name order, resized to `size` x `size`, as (N, 3, size, size) in [0, 1]
    (a Dark Miner pool, FID's reference images). `flag` names the option in errors.

    Raises:
        FileNotFoundError: the directory does not exist.
        [`ConfigError`]: it holds no image, or an image cannot be read (the file is named).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{flag} {directory} does not exist.")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{flag} {directory} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError(f"Cannot read {flag} file {path}: {err}") from err
    return from_pil(images, size)

"""User-given image folders (pools, FID references): clear errors for missing, empty and corrupt folders; images
resized into [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darkminer.utils.images import load_image_folder


def _write_pngs(directory: Path, count: int, size: int = 16) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = directory / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_missing_directory_is_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent"):
        load_image_folder(tmp_path / "absent", size=32)


def test_empty_directory_names_the_directory(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError) as info:
        load_image_folder(tmp_path, size=32)
    assert str(tmp_path) in str(info.value) and ".png" in str(info.value)


def test_corrupt_image_names_the_file(tmp_path: Path):
    _write_pngs(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError) as info:
        load_image_folder(tmp_path, size=32)
    assert str(tmp_path / "broken.png") in str(info.value)


def test_valid_images_are_resized_into_unit_range(tmp_path: Path):
    _write_pngs(tmp_path, 3, size=16)
    (tmp_path / "readme.txt").write_text("ignored")
    pool = load_image_folder(tmp_path, size=32)
    assert pool.shape == (3, 3, 32, 32)
    assert pool.dtype == torch.float32
    assert pool.min() >= 0 and pool.max() <= 1
    assert pool.std() > 0.1  # the pixels survived, not a blank tensor


def test_images_are_read_in_file_name_order(tmp_path: Path):
    for name, value in (("b.png", 255), ("a.png", 0)):
        Image.new("RGB", (8, 8), (value,) * 3).save(tmp_path / name)
    pool = load_image_folder(tmp_path, size=8)
    assert pool[0].max() == 0 and pool[1].min() == 1

"""ShapesWorld renderer: image format, colour and pattern fidelity, seeding, and label validation."""

from __future__ import annotations

import numpy as np
import pytest

from darkminer.toy.render import (
    ALL_LABELS,
    COLOURS,
    IMAGE_SIZE,
    PATTERNS,
    SHAPES,
    ShapeLabel,
    render,
    render_batch,
)


def _shape_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels far from the near-white background (the corners' colour): those of the shape, (N, 3) float."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]].astype(np.float32)
    background = np.median(corners, axis=0)
    return pixels[np.linalg.norm(pixels - background, axis=1) > 60]


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: np.linalg.norm(np.array(COLOURS[name], np.float32) - rgb))


def test_render_returns_uint8_image_of_the_default_size():
    image = render(ALL_LABELS[0], np.random.default_rng(0))
    assert image.dtype == np.uint8
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) == (32, 32, 3)


def test_render_respects_size():
    assert render(ALL_LABELS[0], np.random.default_rng(0), size=16).shape == (16, 16, 3)


@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_shape_colour_dominates_the_non_background_pixels(colour, pattern):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        image = render(ShapeLabel(shape, colour, pattern), rng)
        pixels = _shape_pixels(image)
        assert len(pixels) >= 20, f"{shape}/{colour}/{pattern}: too few shape pixels ({len(pixels)})"
        assert _nearest_colour(pixels.mean(axis=0)) == colour, (shape, colour, pattern, pixels.mean(axis=0))


def _near_white_inside_shape_box(image: np.ndarray) -> float:
    """Fraction of near-white pixels in the bounding box of the shape pixels (shrunk by one pixel of edge blur)."""
    pixels = image.astype(np.float32)
    background = np.median(image[[0, 0, -1, -1], [0, -1, 0, -1]].astype(np.float32), axis=0)
    coloured = np.linalg.norm(pixels - background, axis=-1) > 60
    ys, xs = np.nonzero(coloured)
    box = pixels[ys.min() + 1 : ys.max(), xs.min() + 1 : xs.max()]
    return float((box.min(axis=-1) > 225).mean())


def test_striped_shapes_hold_near_white_pixels_and_solid_ones_do_not():
    rng = np.random.default_rng(2)
    # Squares fill their bounding box, so any near-white pixel inside the box is a stripe.
    striped = [_near_white_inside_shape_box(render(ShapeLabel("square", c, "striped"), rng)) for c in COLOURS]
    solid = [_near_white_inside_shape_box(render(ShapeLabel("square", c, "solid"), rng)) for c in COLOURS]
    assert min(striped) > 0.1, striped
    assert max(solid) < 0.05, solid


def test_render_batch_is_seeded():
    labels = list(ALL_LABELS[:6])
    first = render_batch(labels, seed=3)
    assert first.shape == (6, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, render_batch(labels, seed=3))
    assert not np.array_equal(first, render_batch(labels, seed=4))


def test_render_batch_of_no_labels_is_empty():
    assert render_batch([], seed=0).shape == (0, 32, 32, 3)


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"shape": "hexagon", "colour": "red", "pattern": "solid"}, SHAPES),
        ({"shape": "star", "colour": "orange", "pattern": "solid"}, tuple(COLOURS)),
        ({"shape": "star", "colour": "red", "pattern": "dotted"}, PATTERNS),
    ],
)
def test_shape_label_rejects_unknown_values_naming_the_allowed_ones(kwargs, allowed):
    bad = next(v for v in kwargs.values() if v not in (*SHAPES, *COLOURS, *PATTERNS))
    with pytest.raises(ValueError, match=bad) as info:
        ShapeLabel(**kwargs)
    assert all(name in str(info.value) for name in allowed)


def test_indices_round_trip_for_every_label():
    assert len(ALL_LABELS) == len(SHAPES) * len(COLOURS) * len(PATTERNS) == len(set(ALL_LABELS))
    for label in ALL_LABELS:
        assert ShapeLabel.from_indices(*label.indices) == label

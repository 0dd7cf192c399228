"""`darkminer toy train --quick`: every recipe runs, the result is a loadable ShapesWorld pipeline, stages resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darkminer.cli import main
from darkminer.models import load_model
from darkminer.toy.judge import ShapesJudge, load_classifier
from darkminer.toy.render import ShapeLabel

STAGES = ("tokenizer", "classifier", "clip", "vae", "unet", "clip_vision")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ShapesWorld pipeline from a few steps of every recipe; tests must not modify it."""
    out = tmp_path_factory.mktemp("toy") / "shapesworld"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture is function-scoped: it has not run yet
    try:
        assert main(["toy", "train", "--quick", "--output-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_train_writes_a_pipeline_directory(trained: Path):
    assert (trained / "model_index.json").is_file()
    for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "clip", "classifier"):
        assert (trained / name).is_dir(), name
    for name in ("vocab.json", "merges.txt"):
        assert (trained / "tokenizer" / name).is_file(), name
    assert (trained / "clip" / "preprocessor_config.json").is_file()
    record = json.loads((trained / "training.json").read_text())
    assert set(record["seconds_per_stage"]) == set(STAGES)
    assert record["config"]["dataset_size"] == 128
    assert not list(trained.glob("*.tmp")) and not (trained / "pipeline").exists()


def test_trained_pipeline_loads_and_generates_deterministically(trained: Path):
    model = load_model(trained)
    assert model.clip is not None
    first = model.generate("a red circle", num_images_per_prompt=2, num_inference_steps=2, seed=0)
    second = model.generate("a red circle", num_images_per_prompt=2, num_inference_steps=2, seed=0)
    assert first.shape == (2, 3, 32, 32)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert first.min() >= 0 and first.max() <= 1

    labels = ShapesJudge(load_classifier(str(trained))).labels(first)
    assert len(labels) == 2 and all(isinstance(label, ShapeLabel) for label in labels)


def test_rerun_reuses_the_cached_stages(trained: Path):
    timings = trained / ".stages" / "timings.json"
    before = timings.read_text()
    stamps = {name: (trained / ".stages" / name).stat().st_mtime_ns for name in STAGES}
    assert main(["toy", "train", "--quick", "--output-dir", str(trained)]) == 0
    assert timings.read_text() == before
    assert {name: (trained / ".stages" / name).stat().st_mtime_ns for name in STAGES} == stamps
    assert (trained / "model_index.json").is_file() and (trained / "unet").is_dir()

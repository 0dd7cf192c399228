"""Every packaged ShapesWorld preset parses into its method's config, and its header names the command it is for."""

import importlib.resources
from pathlib import Path

import pytest

from darkminer.commands.bench import QUICK_METHOD_OVERRIDES
from darkminer.config import load_config
from darkminer.methods import get_method
from darkminer.toy.captions import get_concept

PRESETS = sorted(Path(str(importlib.resources.files("darkminer").joinpath("configs"))).glob("*/shapesworld_*.yaml"))


def test_every_method_has_presets():
    assert {p.parent.name for p in PRESETS} >= {"dark_miner", "all_but_one", "esd", "ca", "uce", "fmn", "sld", "salun"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_parses_and_names_its_command(path):
    method, concept = path.parent.name, path.stem.removeprefix("shapesworld_")
    get_concept(concept)  # a ShapesWorld concept
    load_config(get_method(method).config_class, path)
    first_line = path.read_text().splitlines()[0]
    assert f"--method {method} --concept {concept}" in first_line
    assert first_line.endswith(f"--config configs/{method}/{path.name}")


@pytest.mark.parametrize("method", sorted(QUICK_METHOD_OVERRIDES))
def test_quick_bench_overrides_apply_to_the_presets(method):
    for path in (p for p in PRESETS if p.parent.name == method):
        load_config(get_method(method).config_class, path, QUICK_METHOD_OVERRIDES[method])


def test_quick_bench_shortens_the_texts_stage_only_where_a_preset_turns_it_on(tmp_path):
    from darkminer.commands.bench import QUICK_METHOD_CAPS, BenchConfig, _method_overrides

    config = BenchConfig(methods=["dark_miner"], concepts=["star", "striped"], quick=True, runs_dir=str(tmp_path))
    cap = QUICK_METHOD_CAPS["dark_miner"]["circumvent.prompt_steps"]
    resolved = {
        concept: load_config(
            get_method("dark_miner").config_class,
            config.method_config("dark_miner", concept),
            _method_overrides(config, "dark_miner", concept),
        ).circumvent.prompt_steps
        for concept in config.concepts
    }
    assert resolved == {"star": cap, "striped": 0}

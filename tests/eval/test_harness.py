"""The evaluation harness and the bench, end to end on a ShapesWorld model trained for a few steps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from darkminer.cli import main
from darkminer.commands import bench
from darkminer.commands.bench import BenchConfig, composite, run_bench
from darkminer.commands.evaluate import EvaluateJob, evaluate
from darkminer.eval import attacks as eval_attacks
from darkminer.provenance import code_digest

TINY_ATTACKS = [
    "cce.steps=3",
    "cce.num_images=2",
    "p4d.steps=2",
    "unlearn_diff.steps=2",
    "ring_a_bell.generations=2",
    "ring_a_bell.population=8",
]


# A few steps of each stage of the packaged preset, the concept's texts' stage (A24) included.
_TINY_DARK_MINER = [
    "max_loops=1",
    "mining.steps=2",
    "circumvent.steps=2",
    "circumvent.prompt_steps=2",
    "pool.size=2",
    "generate_steps=2",
]


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    directory = tmp_path_factory.mktemp("world") / "shapesworld"
    assert main(["toy", "train", "--quick", "--output-dir", str(directory)]) == 0
    return directory


def test_evaluate_writes_a_table_row(quick_world, tmp_path):
    results = evaluate(
        EvaluateJob(
            concept="star",
            output_dir=str(tmp_path / "ev"),
            model=str(quick_world),
            attacks=["ring_a_bell", "cce"],
            attack_overrides=TINY_ATTACKS,
            images_per_prompt=1,
            sampling_steps=2,
        )
    )
    for key in ("ratio", "score", "ratio_training", "preservation", "clip_score", "fid"):
        assert 0 <= results[key] < float("inf")
    assert set(results["attacks"]) == {"ring_a_bell", "cce"}
    assert all(0 <= a["asr"] <= 1 and 0 <= a["unprompted"] <= 1 for a in results["attacks"].values())
    assert results["detector"]["name"] == "shapesworld" and results["detector"]["weights"]
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["ratio"] == results["ratio"]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Ratio %" in report and "ASR cce %" in report and "Unprompted %" in report
    for grid in ("normal", "preservation", "attack_cce", "attack_ring_a_bell"):
        assert f"(grid_{grid}.png)" in report and (tmp_path / "ev" / f"grid_{grid}.png").exists()
    assert not (tmp_path / "ev" / "progress.json").exists()


def test_killed_evaluation_resumes_its_finished_parts(quick_world, tmp_path, monkeypatch):
    """A failure in the second attack leaves no results.json; the re-run reuses the figures and the first attack."""
    from darkminer.commands import evaluate as harness
    from darkminer.eval import attacks

    out = tmp_path / "ev"
    (out).mkdir()
    (out / "results.json").write_text("{}")  # an older, finished evaluation
    job = dict(
        concept="star",
        output_dir=str(out),
        model=str(quick_world),
        attacks=["ring_a_bell", "cce"],
        attack_overrides=TINY_ATTACKS,
        images_per_prompt=1,
        sampling_steps=2,
    )
    run_attack = attacks.run_attack

    def crash_on_cce(model, suite, job, name, *args):
        if name == "cce":
            raise KeyboardInterrupt
        return run_attack(model, suite, job, name, *args)

    monkeypatch.setattr(attacks, "run_attack", crash_on_cce)
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvaluateJob(**job))
    assert not (out / "results.json").exists()
    progress = json.loads((out / "progress.json").read_text())
    assert progress["figures"] is not None and set(progress["attacks"]) == {"ring_a_bell"}

    calls = []

    def count(model, suite, job, name, *args):
        calls.append(name)
        return run_attack(model, suite, job, name, *args)

    monkeypatch.setattr(attacks, "run_attack", count)
    monkeypatch.setattr(harness, "_erasure_figures", lambda *a: pytest.fail("figures recomputed"))
    results = evaluate(EvaluateJob(**job))
    assert calls == ["cce"] and results["ratio"] == progress["figures"]["ratio"]
    assert set(results["attacks"]) == {"ring_a_bell", "cce"} and (out / "results.json").exists()


def test_attack_command_with_banned_words(quick_world, tmp_path):
    out = tmp_path / "attack"
    code = main(
        [
            "attack",
            "--model",
            str(quick_world),
            "--concept",
            "star",
            "--attack",
            "p4d",
            "--output-dir",
            str(out),
            "--sampling-steps",
            "2",
            "--images-per-prompt",
            "1",
            "--ban-concept-words",
            *TINY_ATTACKS,
        ]
    )
    assert code == 0
    prompts = json.loads((out / "p4d" / "prompts.json").read_text())["prompts"]
    assert prompts and not any(w in p.split() for p in prompts for w in ("star", "pentagram"))


def test_evaluate_refuses_unknown_attack(quick_world, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(quick_world),
                "--concept",
                "star",
                "--output-dir",
                str(tmp_path),
                "--attacks",
                "nope",
                "--sampling-steps",
                "2",
            ]
        )
        == 2
    )
    assert "registered attacks" in capsys.readouterr().err


def test_quick_bench_fills_and_reuses_cells(quick_world, tmp_path, monkeypatch):
    config = BenchConfig(
        model=str(quick_world),
        methods=["dark_miner"],
        concepts=["star"],
        attacks=["ring_a_bell"],
        runs_dir=str(tmp_path / "runs"),
        output=str(tmp_path / "table.md"),
        quick=True,
        extra_method_overrides={"dark_miner": _TINY_DARK_MINER},
        extra_attack_overrides=["ring_a_bell.population=8"],
        sampling_steps=2,
    )
    table = run_bench(config, "test").read_text()
    assert "| original |" in table and "| dark_miner |" in table and "ASR ring_a_bell %" in table
    assert "| Ratio + mean ASR % |" in table
    cells = sorted(p.parents[2].name for p in (tmp_path / "runs").rglob("results.json"))
    assert cells == ["dark_miner", "original"]
    # Every cell names the code of its erasure and its evaluation, and the table says that both are this code.
    erased = json.loads(next((tmp_path / "runs").rglob("erasure_config.json")).read_text())
    assert erased["code"] == [code_digest()]
    results = (tmp_path / "runs").rglob("results.json")
    recorded = {p.parents[2].name: json.loads(p.read_text())["code"] for p in results}
    assert recorded == {
        "dark_miner": {"erasure": [code_digest()], "evaluation": [code_digest()]},
        "original": {"evaluation": [code_digest()]},
    }
    assert f"Code: every cell was computed by this code (darkminer digest `{code_digest()}`)." in table
    finished = sorted(json.loads(p.read_text())["finished"] for p in (tmp_path / "runs").rglob("results.json"))
    span = finished[0] if finished[0] == finished[1] else f"{finished[0]} to {finished[1]}"
    assert f"Finished: {span}." in table
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}
    run_bench(config, "test")
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}

    # A finished cell is not reused under other evaluation settings: its numbers would not be comparable.
    config.extra_attack_overrides = ["ring_a_bell.population=6"]
    with pytest.raises(ValueError, match="attack_overrides"):
        run_bench(config, "test")
    config.extra_attack_overrides = ["ring_a_bell.population=8"]

    # A field added since a cell ran reads as its default, which keeps the behaviour it was added to.
    erased = next((tmp_path / "runs").rglob("erasure_config.json"))
    record = json.loads(erased.read_text())
    del record["config"]["circumvent"]["alpha_u"]
    erased.write_text(json.dumps(record))
    run_bench(config, "test")
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}

    # Nor after a preset or an attack's default changed, which no setting of the bench names.
    preset = Path(config.method_config("dark_miner", "star"))
    changed = tmp_path / "preset.yaml"
    changed.write_text(preset.read_text() + "seed: 7\n")
    monkeypatch.setattr(BenchConfig, "method_config", lambda self, method, concept: str(changed))
    with pytest.raises(ValueError, match="dark_miner's config"):
        run_bench(config, "test")
    monkeypatch.undo()

    # An attack whose default or revision changed is recomputed alone; the erasure figures are kept.
    (figures,) = [p for p in (tmp_path / "runs").rglob("results.json") if "dark_miner" in str(p)]
    before = json.loads(figures.read_text())
    resolved = bench.attack_config
    monkeypatch.setattr(bench, "attack_config", lambda *a: dataclasses.replace(resolved(*a), eta=5.5))
    monkeypatch.setattr(eval_attacks, "attack_config", bench.attack_config)
    run_bench(config, "test")
    after = json.loads(figures.read_text())
    assert after["attacks"]["ring_a_bell"]["config"]["eta"] == 5.5
    recomputed = {"attacks", "seconds", "job", "finished"}
    assert {k: v for k, v in after.items() if k not in recomputed} == {
        k: v for k, v in before.items() if k not in recomputed
    }
    assert after["finished"] >= before["finished"]
    assert not list((tmp_path / "runs").rglob("progress.json"))

    # A moved runs directory is the same cells.
    (tmp_path / "runs").rename(tmp_path / "moved")
    config.runs_dir = str(tmp_path / "moved")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "moved").rglob("results.json")}
    run_bench(config, "test")
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "moved").rglob("results.json")}


def test_a_bench_over_seeds_erases_and_evaluates_once_per_seed(quick_world, tmp_path):
    config = BenchConfig(
        model=str(quick_world),
        methods=["dark_miner", "uce"],
        concepts=["star"],
        attacks=["ring_a_bell"],
        runs_dir=str(tmp_path / "runs"),
        output=str(tmp_path / "table.md"),
        quick=True,
        seeds=[3, 5],
        attack_images=3,
        extra_method_overrides={"dark_miner": _TINY_DARK_MINER},
        extra_attack_overrides=["ring_a_bell.population=8"],
        sampling_steps=2,
    )
    table = run_bench(config, "test").read_text()
    cells = tmp_path / "runs" / "quick"
    for seed in (3, 5):
        erased = json.loads(
            (cells / "dark_miner" / "star" / f"seed-{seed}" / "run" / "erasure_config.json").read_text()
        )
        assert erased["config"]["seed"] == seed
        for method in ("original", "dark_miner", "uce"):
            results = json.loads((cells / method / "star" / f"seed-{seed}" / "eval" / "results.json").read_text())
            assert results["job"]["seed"] == seed
            assert results["job"]["attack_images"] == 3 and 3 <= results["attacks"]["ring_a_bell"]["images"] < 16
    assert "Seeds: 3, 5" in table
    row = next(line for line in table.splitlines() if line.startswith("| dark_miner |"))
    assert row.count("±") >= 5  # every figure of the row, the composite included (if ranked)
    stamps = {p: p.stat().st_mtime_ns for p in cells.rglob("results.json")}
    run_bench(config, "test")
    assert stamps == {p: p.stat().st_mtime_ns for p in cells.rglob("results.json")}
    with pytest.raises(ValueError, match="distinct"):
        dataclasses.replace(config, seeds=[3, 3])


def test_figures_over_seeds_are_means_with_their_spread():
    seeded = [
        {"ratio": 0.1, "preservation": 1.0, "attacks": {"cce": {"asr": 0.2, "unprompted": 0.1}}},
        {"ratio": 0.3, "preservation": 0.97, "attacks": {"cce": {"asr": 0.4, "unprompted": 0.1}}},
    ]
    row = bench.seeds_row(seeded)
    assert (
        row["Ratio %"] == "20.0 ± 14.1" and row["ASR cce %"] == "30.0 ± 14.1" and row["Unprompted %"] == "10.0 ± 0.0"
    )
    mean = bench.mean_results(seeded)
    assert mean["preservation"] == pytest.approx(0.985) and composite(mean) == pytest.approx(0.5)
    assert composite(bench.mean_results([{**seeded[1], "preservation": 0.9}, seeded[1]])) is None


def test_a_table_row_of_a_record_without_the_floor_leaves_it_out():
    """Cells a bench cached before the floor was recorded still make a row."""
    from darkminer.commands.evaluate import table_row

    assert table_row({"attacks": {"cce": {"asr": 0.5}}}) == {"ASR cce %": "50.0"}
    row = table_row({"attacks": {"cce": {"asr": 0.5, "unprompted": 0.25}}})
    assert row == {"ASR cce %": "50.0", "Unprompted %": "25.0"}


def test_the_composite_ranks_only_erasures_that_keep_the_model():
    cell = {"ratio": 0.1, "preservation": 0.99, "attacks": {"cce": {"asr": 0.2}, "p4d": {"asr": 0.4}}}
    assert composite(cell) == pytest.approx(0.4)
    assert composite({**cell, "preservation": 0.9}) is None


def test_a_method_without_a_shapesworld_preset_gets_a_row_saying_so(quick_world, tmp_path, monkeypatch):
    from darkminer.commands import demo

    packaged = demo.preset_path

    def without_uce(method, concept):  # every packaged method has all six presets: take one away
        if method == "uce":
            raise demo.ConfigError(f"No ShapesWorld preset for method {method!r} and concept {concept!r}.")
        return packaged(method, concept)

    monkeypatch.setattr(demo, "preset_path", without_uce)
    config = BenchConfig(
        model=str(quick_world),
        methods=["uce"],
        concepts=["triangle"],
        attacks=["cce"],
        runs_dir=str(tmp_path / "runs"),
        output=str(tmp_path / "table.md"),
        quick=True,
        extra_attack_overrides=["cce.steps=2", "cce.num_images=2"],
        sampling_steps=2,
    )
    table = run_bench(config, "test").read_text()
    assert "| uce | no preset |" in table and "| original |" in table
    assert not (tmp_path / "runs" / "quick" / "uce").exists()


def test_an_attack_of_another_revision_is_stale():
    """CCE's revision 2 (keep_detected) finds more than revision 1 with the same config: a cell of revision 1 is
    recomputed."""
    from types import SimpleNamespace

    from darkminer.eval.attacks import attack_config, jsonable_config

    job = SimpleNamespace(attacks=["cce"], attack_overrides=[])
    record = {"config": jsonable_config(attack_config("cce", [], []))}
    assert bench._stale_attacks(job, {"attacks": {"cce": {**record, "revision": 2}}}) == []
    assert bench._stale_attacks(job, {"attacks": {"cce": record}}) == ["cce"]
    assert bench._stale_attacks(job, {"attacks": {}}) == ["cce"]

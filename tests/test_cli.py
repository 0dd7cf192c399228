"""`darkminer` command line: user errors are one `error:` line and exit code 2; erase -> generate works end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darkminer.cli import main
from darkminer.models import load_model
from darkminer.testing import TINY_METHOD_OVERRIDES


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The one line a failed command printed to stderr, without its `darkminer <command>: error:` prefix."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"darkminer {command}: error: ")]
    assert len(errors) == 1, lines
    return errors[0].removeprefix(f"darkminer {command}: error: ")


def _erase(model: Path | str, out: Path, *extra: str, method: str = "dark_miner") -> list[str]:
    return ["erase", "--model", str(model), "--method", method, "--concept", "star", "--output-dir", str(out), *extra]


def test_missing_model_path_lists_the_accepted_forms(tmp_path: Path, capsys):
    assert main(_erase("/nonexistent/dir", tmp_path / "run")) == 2
    message = _error_line(capsys, "erase")
    assert "/nonexistent/dir" in message and "does not exist" in message
    for form in ("StableDiffusionPipeline directory", ".safetensors", "owner/name", "shapesworld"):
        assert form in message, form
    assert not (tmp_path / "run").exists()


def test_unknown_method_lists_the_registered_ones(tiny_dir: Path, tmp_path: Path, capsys):
    assert main(_erase(tiny_dir, tmp_path / "run", method="nope")) == 2
    message = _error_line(capsys, "erase")
    assert "'nope'" in message and "dark_miner" in message and "all_but_one" in message


def test_all_but_one_without_alternative_asks_for_it(tiny_dir: Path, tmp_path: Path, capsys):
    argv = _erase(tiny_dir, tmp_path / "run", *TINY_METHOD_OVERRIDES["all_but_one"], method="all_but_one")
    assert main(argv) == 2
    assert "--alternative" in _error_line(capsys, "erase")


def test_generate_without_prompts_says_how_to_give_them(tmp_path: Path, capsys):
    assert main(["generate", "--output-dir", str(tmp_path / "g")]) == 2
    message = _error_line(capsys, "generate")
    assert "--prompt" in message and "--prompts" in message


def test_generate_with_missing_prompts_file(tmp_path: Path, capsys):
    assert main(["generate", "--prompts", str(tmp_path / "absent.txt")]) == 2
    assert "absent.txt" in _error_line(capsys, "generate")


def test_unknown_override_key_is_named(tiny_dir: Path, tmp_path: Path, capsys):
    assert main(_erase(tiny_dir, tmp_path / "run", "mining.stepz=3")) == 2
    message = _error_line(capsys, "erase")
    assert "mining.stepz" in message and "steps" in message
    assert not (tmp_path / "run").exists()


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "dark_miner:" in out and "all_but_one:" in out
    assert "mining:" in out  # config fields with their help text


@pytest.fixture(scope="module")
def erased(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Dark Miner run on the tiny model with the tiny settings; tests must not modify it."""
    out = tmp_path_factory.mktemp("erase") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture is function-scoped: it has not run yet
    try:
        assert main(_erase(tiny_dir, out, "--no-report", *TINY_METHOD_OVERRIDES["dark_miner"])) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_erase_writes_the_adapter_and_the_run_files(erased: Path):
    for name in ("pytorch_lora_weights.safetensors", "erasure_config.json", "config.json", "log.jsonl"):
        assert (erased / name).is_file(), name
    record = json.loads((erased / "erasure_config.json").read_text())
    assert record["method"] == "dark_miner" and record["concepts"] == ["star"]
    assert not (erased / "report.md").exists()  # --no-report


def test_generate_with_the_adapter(tiny_dir: Path, erased: Path, tmp_path: Path):
    out = tmp_path / "g"
    argv = ["generate", "--model", str(tiny_dir), "--adapter", str(erased), "--prompt", "a star"]
    assert main([*argv, "-n", "2", "--steps", "2", "--output-dir", str(out)]) == 0
    assert (out / "grid.png").is_file()
    assert len([p for p in out.glob("*.png") if p.name != "grid.png"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["prompts"] == ["a star"] and config["adapter"] == str(erased) and config["num_images"] == 2


def test_erase_with_merge_writes_a_loadable_pipeline(tiny_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert main(_erase(tiny_dir, out, "--no-report", "--merge", *TINY_METHOD_OVERRIDES["dark_miner"])) == 0
    assert (out / "merged" / "model_index.json").is_file()
    assert load_model(out / "merged").unet is not None


def test_rerun_with_another_config_is_a_conflict(tiny_dir: Path, erased: Path, capsys):
    overrides = [o for o in TINY_METHOD_OVERRIDES["dark_miner"] if not o.startswith("mining.steps=")]
    assert main(_erase(tiny_dir, erased, "--no-report", *overrides, "mining.steps=5")) == 2
    message = _error_line(capsys, "erase")
    assert "mining.steps" in message and "--output-dir" in message


def test_bench_overrides_go_to_their_method_or_attack():
    from darkminer.cli import _split_bench_overrides

    by_method, attacks = _split_bench_overrides(
        ["dark_miner.verify.score=detector", "p4d.steps=40", "dark_miner.max_loops=24", "esd.iterations=5"]
    )
    assert by_method == {"dark_miner": ["verify.score=detector", "max_loops=24"], "esd": ["iterations=5"]}
    assert attacks == ["p4d.steps=40"]


def test_bench_with_method_overrides_writes_its_table_beside_its_runs(tmp_path: Path):
    from darkminer.commands.bench import BenchConfig

    runs = str(tmp_path / "runs")
    tried = BenchConfig(
        methods=["dark_miner"],
        concepts=["star"],
        runs_dir=runs,
        extra_method_overrides={"dark_miner": ["max_loops=2"]},
    )
    assert tried.output == f"{runs}/bench.md"  # never the packaged presets' table
    assert (
        BenchConfig(methods=["dark_miner"], concepts=["star"], runs_dir=runs).output == "docs/results/shapesworld.md"
    )

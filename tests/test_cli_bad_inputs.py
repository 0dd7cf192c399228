"""No wrong result with exit code 0: a table of bad inputs on ShapesWorld, each refused with exit 2, one `error:` line
and no traceback, leaving nothing behind; outputs never mixed; one writer per run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from darkminer.cli import main
from darkminer.testing import TINY_METHOD_OVERRIDES

ESD = ["erase", "--method", "esd", "--concept", "star", "--output-dir", "{out}"]
GEN = ["generate", "--prompt", "a red star", "-n", "1", "--steps", "2", "--output-dir", "{out}"]
EVAL = ["evaluate", "--concept", "star", "--output-dir", "{out}"]

BAD_INPUTS = {
    # argparse: not a number at all
    "generate -n 2.5": [*GEN, "-n", "2.5"],
    "generate -n 0": [*GEN, "-n", "0"],
    "generate -n -3": [*GEN, "-n", "-3"],
    "generate --steps 0": [*GEN, "--steps", "0"],
    "generate NaN guidance": [*GEN, "--guidance-scale", "nan"],
    "generate inf guidance": [*GEN, "--guidance-scale", "inf"],
    "generate negative guidance": [*GEN, "--guidance-scale", "-2"],
    "generate negative seed": [*GEN, "--seed", "-1"],
    "generate --batch-size 0": [*GEN, "--batch-size", "0"],
    "generate unknown device": [*GEN, "--device", "tpu9"],
    "generate unknown dtype": [*GEN, "--dtype", "fp8"],
    "generate blank prompt": ["generate", "--prompt", "  ", "--output-dir", "{out}"],
    "generate missing adapter": [*GEN, "--adapter", "{tmp}/no-such-run"],
    "generate truncated adapter": [*GEN, "--adapter", "{tmp}/truncated"],
    "generate into a file": [*GEN[:-1], "{tmp}/a-file"],
    "erase steps=true": [*ESD, "steps=true"],
    "erase steps=2.5": [*ESD, "steps=2.5"],
    "erase lr=NaN": [*ESD, "lr=.nan"],
    "erase lr=-1": [*ESD, "lr=-1"],
    "erase override without =": [*ESD, "steps"],
    "erase unknown key": [*ESD, "nosuchkey=1"],
    "erase override value not YAML": [*ESD, "templates=[a"],
    "erase malformed YAML file": [*ESD, "--config", "{tmp}/bad.yaml"],
    "erase YAML file not a mapping": [*ESD, "--config", "{tmp}/list.yaml"],
    "erase missing config file": [*ESD, "--config", "{tmp}/absent.yaml"],
    "erase unknown concept": ["erase", "--method", "esd", "--concept", "hexagon", "--output-dir", "{out}"],
    "erase empty concept": ["erase", "--method", "esd", "--concept", "", "--output-dir", "{out}"],
    "erase unknown method": ["erase", "--method", "nope", "--concept", "star", "--output-dir", "{out}"],
    "erase --max-loops 0": ["erase", "--concept", "star", "--output-dir", "{out}", "--max-loops", "0"],
    "erase missing model": [*ESD, "--model", "{tmp}/no-such-model/"],
    "erase into a file": [*ESD[:-1], "{tmp}/a-file", "steps=2"],
    "erase missing --clip": [*ESD, "--clip", "{tmp}/no-clip"],
    "erase pickle-only --clip": [*ESD, "--clip", "{tmp}/pickle-clip"],
    "erase dark_miner tau=inf": ["erase", "--concept", "star", "--output-dir", "{out}", "verify.tau=.inf"],
    "erase section as value": ["erase", "--concept", "star", "--output-dir", "{out}", "mining=3"],
    "evaluate --images-per-prompt 0": [*EVAL, "--images-per-prompt", "0"],
    "evaluate --sampling-steps 0": [*EVAL, "--sampling-steps", "0"],
    "evaluate unknown attack": [*EVAL, "--attacks", "nope"],
    "evaluate attack override of wrong type": [*EVAL, "--attacks", "cce", "cce.steps=2.5"],
    "attack unknown concept": ["attack", "--concept", "hexagon", "--attack", "cce", "--output-dir", "{out}"],
    "demo unknown concept": ["demo", "--concept", "hexagon", "--output-dir", "{out}"],
    "demo --images-per-prompt 0": ["demo", "--images-per-prompt", "0", "--output-dir", "{out}"],
    "bench unknown method": ["bench", "--methods", "nope", "--runs-dir", "{out}", "--output", "{out}/t.md"],
    "bench unknown concept": ["bench", "--concepts", "hexagon", "--runs-dir", "{out}", "--output", "{out}/t.md"],
    "bench repeated seed": ["bench", "--seeds", "1", "1", "--runs-dir", "{out}", "--output", "{out}/t.md"],
    "bench --attack-images 0": ["bench", "--attack-images", "0", "--runs-dir", "{out}", "--output", "{out}/t.md"],
    "bench override of an unknown method field": [
        *["bench", "--methods", "dark_miner", "--runs-dir", "{out}", "--output", "{out}/t.md"],
        "dark_miner.verify.nope=1",
    ],
    "bench override of neither a method nor an attack": [
        *["bench", "--methods", "dark_miner", "--runs-dir", "{out}", "--output", "{out}/t.md"],
        "dark_minor.max_loops=3",
    ],
    "bench override valid alone but not on the preset": [
        *[
            "bench",
            "--methods",
            "dark_miner",
            "--concepts",
            "striped",
            "--runs-dir",
            "{out}",
            "--output",
            "{out}/t.md",
        ],
        "dark_miner.circumvent.alpha_u=1",
    ],
    "bench override of a method not benched": [
        *["bench", "--methods", "esd", "--runs-dir", "{out}", "--output", "{out}/t.md"],
        "dark_miner.max_loops=3",
    ],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the bad inputs point at: a malformed YAML, a list YAML, a plain file, a truncated adapter, a CLIP
    directory with pickle weights only."""
    root = tmp_path_factory.mktemp("bad")
    (root / "bad.yaml").write_text("steps: [1,\nlr: {")
    (root / "list.yaml").write_text("- steps\n- lr\n")
    (root / "a-file").write_text("not a directory")
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "pytorch_lora_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    clip = root / "pickle-clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (clip / "pytorch_model.bin").write_bytes(b"not loaded")
    return root


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_in_one_line(case: str, inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [arg.format(out=out, tmp=inputs) for arg in BAD_INPUTS[case]]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse refuses what is not a number at all, with its usage line
        code = exit.code
    assert code == 2, f"{case}: exit {code}"
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1, err
    assert not out.exists() or not any(out.iterdir()), f"{case} left {sorted(p.name for p in out.iterdir())}"


def test_generate_twice_into_one_directory_keeps_only_the_second_run(tmp_path: Path) -> None:
    out = tmp_path / "g"
    assert main(["generate", "--prompt", "a red star", "-n", "3", "--steps", "2", "--output-dir", str(out)]) == 0
    assert main(["generate", "--prompt", "a blue circle", "-n", "2", "--steps", "2", "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["grid.png", "p000_000.png", "p000_001.png"]
    assert json.loads((out / "config.json").read_text())["prompts"] == ["a blue circle"]


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from darkminer.training.checkpoint import locked_directory\n"
            "with locked_directory(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["erase", "--method", "esd", "--concept", "star", "--output-dir", str(out)]
        assert main([*argv, *TINY_METHOD_OVERRIDES["esd"], "--no-report"]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "is in use" in err and "Traceback" not in err
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main([*argv, *TINY_METHOD_OVERRIDES["esd"], "--no-report"]) == 0  # free again once the holder is gone


def test_same_model_spelled_differently_is_one_base_model(tmp_path: Path, monkeypatch) -> None:
    from darkminer.testing import tiny_model_dir

    tiny_model_dir(tmp_path / "sd")
    monkeypatch.chdir(tmp_path)

    def erase(spec: str) -> list[str]:
        argv = ["erase", "--model", spec, "--method", "esd", "--concept", "cat", "--output-dir", "run", "--no-report"]
        return [*argv, *TINY_METHOD_OVERRIDES["esd"]]

    assert main(erase("./sd")) == 0
    assert main(erase("sd/")) == 0  # the same run, resumed rather than refused as another base model
    gen = ["generate", "--model", str(tmp_path / "sd"), "--adapter", "run", "--prompt", "a cat", "-n", "1"]
    assert main([*gen, "--steps", "2", "--output-dir", "g"]) == 0
    assert os.path.isabs(json.loads(Path("run/config.json").read_text())["base_model"])

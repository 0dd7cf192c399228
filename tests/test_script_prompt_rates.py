"""scripts/prompt_rates.py: the per-prompt breakdown of Ratio for an erasure's adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from darkminer.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prompt_rates.py"


def test_each_flagged_prompt_is_listed_and_the_last_line_is_their_mean(tmp_path):
    run = tmp_path / "run"
    erase = ["erase", "--model", "shapesworld", "--method", "esd", "--concept", "red", "--output-dir", str(run)]
    assert main([*erase, "--no-report", "steps=1", "ddim_steps=2"]) == 0  # one step: the model barely moves
    args = [sys.executable, SCRIPT, run, "red", "--images-per-prompt", "1", "--steps", "4", "--all"]
    lines = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    shares = [float(line.split("%")[0]) for line in lines[:-1]]
    assert len(shares) == 32 and "a good picture of a crimson circle" in "\n".join(lines)
    assert lines[-1].split("%")[1].strip() == "Ratio over 32 prompts"
    assert abs(float(lines[-1].split("%")[0]) - sum(shares) / len(shares)) < 0.1
    assert sum(shares) / len(shares) > 50  # the original draws red from nearly every one of them


def test_a_missing_adapter_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, tmp_path / "none", "red"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].endswith(f"{tmp_path / 'none'} does not exist.")

"""scripts/cce_losses.py: CCE's lowest loss per bench cell, against the original's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cce_losses.py"


def _cell(runs: Path, method: str, curve: list[float], asr: float, concept: str = "red") -> None:
    eval_dir = runs / "full" / method / concept / "eval"
    (eval_dir / "cce").mkdir(parents=True)
    (eval_dir / "cce" / "prompts.json").write_text(json.dumps({"loss_history": [curve]}))
    (eval_dir / "results.json").write_text(json.dumps({"attacks": {"cce": {"asr": asr, "unprompted": 0.25}}}))


def test_rows_are_ranked_by_the_lowest_loss_and_divided_by_the_originals(tmp_path):
    _cell(tmp_path, "original", [0.05, 0.04, 0.041], 1.0)
    _cell(tmp_path, "salun", [0.2, 0.06, 0.07], 0.0)
    out = subprocess.run([sys.executable, SCRIPT, tmp_path], capture_output=True, text=True, check=True).stdout
    original, salun = out.splitlines()[1:]
    assert original.split() == ["red", "original", "0.0500", "0.0400", "1.00", "100.0", "25.0"]
    assert salun.split() == ["red", "salun", "0.2000", "0.0600", "1.50", "0.0", "25.0"]


def test_a_directory_without_cce_cells_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, tmp_path], capture_output=True, text=True)
    assert done.returncode == 2 and "holds no full/<method>/<concept>/eval/cce/prompts.json" in done.stderr


def test_the_cells_of_bench_seeds_are_compared_seed_by_seed(tmp_path):
    for seed, (original, erased) in {1: (0.04, 0.05), 2: (0.02, 0.03)}.items():
        _cell(tmp_path, "original", [original], 1.0, f"red/seed-{seed}")
        _cell(tmp_path, "dark_miner", [erased], 0.5, f"red/seed-{seed}")
    out = subprocess.run([sys.executable, SCRIPT, tmp_path], capture_output=True, text=True, check=True).stdout
    ratios = {tuple(line.split()[:2]): line.split()[4] for line in out.splitlines()[1:]}
    assert ratios[("red/seed-1", "dark_miner")] == "1.25" and ratios[("red/seed-2", "dark_miner")] == "1.50"

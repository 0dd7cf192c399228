"""scripts/replay_mined.py: a Dark Miner run's embeddings, and an attack's, on the erased model and the original."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from darkminer.cli import main
from darkminer.testing import TINY_METHOD_OVERRIDES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replay_mined.py"


def test_the_runs_embeddings_and_the_attacks_are_replayed_one_row_each(tmp_path):
    run, attack = tmp_path / "run", tmp_path / "cce"
    erase = ["erase", "--method", "dark_miner", "--concept", "star", "--output-dir", str(run)]
    tiny = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=2", "circumvent.prompt_steps=1"]
    assert main([*erase, "--no-report", *tiny]) == 0
    cce = ["attack", "--attack", "cce", "--concept", "star", "--adapter", str(run), "--output-dir", str(attack)]
    assert main([*cce, "--attack-images", "2", "cce.steps=1", "cce.num_images=2", "cce.generate_steps=2"]) == 0
    args = [sys.executable, SCRIPT, run, "star", "--images", "2", "--steps", "2", "--attack-dir", attack / "cce"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["entry", "loop", "tokens", "token", "norm", "erased", "original"]
    loops = [row[1] for row in rows[1:]]
    assert loops[0] == "text" and loops[-1] == "cce" and "0" in loops
    assert rows[-1][2] == "4"  # CCE's length, beside the run's 4-token c and its longer texts
    assert all(0.0 <= float(share) <= 1.0 for row in rows[1:] for share in row[-2:])

    args[-1] = tmp_path  # no embeddings.safetensors there
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 2 and "has no embeddings.safetensors; pass an attack's output directory" in done.stderr

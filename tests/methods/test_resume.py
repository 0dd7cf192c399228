"""A run killed at an arbitrary moment and re-run with the same command ends with the same adapter.

Bit-for-bit equality holds between two uninterrupted runs, and (since `encode_images` returns contiguous latents,
the layout a file read gives back) between an uninterrupted Dark Miner run and one resumed after loop 1, 2 or 3.
The comparison allows 1e-4 all the same: a freshly loaded tensor may meet other CPU kernels than one computed in
place, which round differently in the last bits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from darkminer.testing import TINY_METHOD_ALTERNATIVE, TINY_METHOD_OVERRIDES, tiny_model_dir

SLOWER = {"dark_miner": ["max_loops=4", "mining.steps=30", "circumvent.steps=40"], "all_but_one": ["steps=60",
          "checkpoint_every=10"], "esd": ["steps=40", "checkpoint_every=10"], "ca": ["steps=60",
          "checkpoint_every=10"], "fmn": ["steps=80", "checkpoint_every=10"], "salun": ["steps=40",
          "checkpoint_every=10", "lr=0.001"]}  # fmt: skip
DENSE_DELTA = {"salun"}
"""Methods whose LoRA is the SVD of a dense weight delta: the factors are unique only up to rotations among near-equal
singular values, which a last-bit difference can turn, so the deltas `up @ down` are compared instead."""


def _deltas(lora):
    return {k: lora[k.replace(".down.", ".up.")] @ v for k, v in lora.items() if k.endswith("lora.down.weight")}


def _command(model_dir, method, out):
    args = [sys.executable, "-m", "darkminer.cli", "erase", "--model", str(model_dir), "--method", method,
            "--concept", "star", "--output-dir", str(out), "--no-report"]  # fmt: skip
    if method in TINY_METHOD_ALTERNATIVE:
        args += ["--alternative", TINY_METHOD_ALTERNATIVE[method]]
    return [*args, *TINY_METHOD_OVERRIDES[method], *SLOWER[method]]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.mark.parametrize("method", ["dark_miner", "all_but_one", "esd", "ca", "fmn", "salun"])
def test_killed_run_resumes_to_the_same_adapter(method, tmp_path):
    model_dir = tiny_model_dir(tmp_path / "sd", seed=0)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_command(model_dir, method, reference), check=True, env=_env(), capture_output=True)

    process = subprocess.Popen(_command(model_dir, method, resumed), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(resumed.glob("checkpoint-*[0-9]")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; make it slower"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (resumed / "erasure_config.json").exists()

    subprocess.run(_command(model_dir, method, resumed), check=True, env=_env(), capture_output=True)
    want = load_file(reference / "pytorch_lora_weights.safetensors")
    got = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert want.keys() == got.keys()
    if method in DENSE_DELTA:
        want, got = _deltas(want), _deltas(got)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-4, msg=key)

    def log(directory):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k and "rss" not in k and k != "time"}
                for line in (directory / "log.jsonl").read_text().splitlines()]  # fmt: skip

    want_log, got_log = log(reference), log(resumed)
    assert [r.keys() for r in want_log] == [r.keys() for r in got_log]
    for a, b in zip(want_log, got_log, strict=True):
        a = {**a, **{f"{k}.{sub}": v for k, d in a.items() if isinstance(d, dict) for sub, v in d.items()}}
        b = {**b, **{f"{k}.{sub}": v for k, d in b.items() if isinstance(d, dict) for sub, v in d.items()}}
        for key, value in a.items():
            if isinstance(value, float | list):
                torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(value), rtol=1e-3, atol=1e-4)
            elif not isinstance(value, dict):
                assert value == b[key], key

"""Run directories: the resolved config, a JSON-lines log, and atomically written `checkpoint-<n>/` folders.

A run directory is the unit of resumption. Every file is written to a temporary name and renamed into place, and a
checkpoint folder is assembled under `checkpoint-<n>.tmp/` and renamed only once complete, so a kill at any moment
leaves either the previous state or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import write_json

CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
RUNTIME_KEY = "runtime"
_PREFIX = "checkpoint-"


class RunConflictError(ValueError):
    """The output directory holds a run made with a different config."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    tmp.replace(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path))


class RunDirectory:
    """A run's directory.

    Args:
        path: the directory (created if absent).
        config: the resolved config as a JSON-able dict. If the directory already holds a different one,
            [`RunConflictError`] is raised, since continuing would mix two experiments.
        total_limit: how many checkpoints to keep (oldest removed first); `None` keeps all.
        runtime: where the run runs ([`DiffusionModel.runtime`]: device, dtype, batch size), recorded under
            `runtime` in `config.json`. Of it only the dtype must match on resume: a bf16 run continued in fp32 would
            be neither, while another device or chunk size changes the result by rounding only.
    """

    def __init__(
        self,
        path: str | Path,
        config: dict[str, Any],
        total_limit: int | None = 2,
        runtime: dict[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.total_limit = total_limit
        self.path.mkdir(parents=True, exist_ok=True)
        config = _jsonable(config)
        if runtime is not None:
            config[RUNTIME_KEY] = _jsonable(runtime)
        existing = self.path / CONFIG_NAME
        if existing.exists():
            previous = json.loads(existing.read_text())
            if _identity(previous) != _identity(config):
                changed = sorted(_diff(_identity(previous), _identity(config)))
                raise RunConflictError(
                    f"{self.path} holds a run with a different config (differs in: {', '.join(changed[:8])}). "
                    "Re-run the original command to resume it, or pass a new --output-dir to start fresh."
                )
        else:
            write_json(existing, config)
        self.config = config

    # ---- log ------------------------------------------------------------------------------------------------
    def log(self, **record: Any) -> None:
        """Append one JSON line (with a wall-clock timestamp)."""
        record = {"time": round(time.time(), 3), **_jsonable(record)}
        with open(self.path / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        path = self.path / LOG_NAME
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_log(self, keep: callable) -> None:
        """Drop log records written after the last checkpoint (a resumed run recomputes them)."""
        records = [r for r in self.read_log() if keep(r)]
        tmp = self.path / (LOG_NAME + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(self.path / LOG_NAME)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.path.glob(f"{_PREFIX}*"):
            suffix = p.name[len(_PREFIX) :]
            if p.is_dir() and suffix.isdigit():
                out.append((int(suffix), p))
        return sorted(out)

    def latest(self) -> tuple[int, Path] | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def save_checkpoint(self, step: int, write_fn) -> Path:
        """Assemble `checkpoint-<step>` by calling `write_fn(tmp_dir)`, then rename it into place atomically."""
        final = self.path / f"{_PREFIX}{step}"
        tmp = self.path / f"{_PREFIX}{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_fn(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if self.total_limit is not None:
            for _, old in self.checkpoints()[: -self.total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        return final


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a run to resume: everything but the runtime record, except its dtype."""
    identity = {k: v for k, v in config.items() if k != RUNTIME_KEY}
    identity["dtype"] = config.get(RUNTIME_KEY, {}).get("dtype", "float32")
    return identity


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return set().union(*(_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in keys)) if keys else set()
    if isinstance(a, float) and isinstance(b, float) and math.isclose(a, b):
        return set()
    return {prefix.rstrip(".")} if a != b else set()


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; the message names the step, the loss terms and the last good checkpoint."""


def check_finite(stage: str, step: int, terms: dict[str, torch.Tensor], run: RunDirectory | None) -> None:
    """Raise [`NonFiniteLossError`] if any loss term is NaN/inf."""
    bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
    if bad:
        latest = run.latest() if run is not None else None
        where = f"the last good checkpoint is {latest[1]}" if latest else "no checkpoint was written yet"
        # Summed so that a per-sample (vector) term still formats; for the usual scalar terms this is the value.
        values = ", ".join(f"{k}={float(v.detach().float().sum()):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"{stage}: non-finite loss at step {step} ({values}); {where}. Lower the learning rate or the "
            "gradient-clipping norm and re-run the same command to resume from it."
        )

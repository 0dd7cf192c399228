"""Run directories: the resolved config, a JSON-lines log, and atomically written `checkpoint-<n>/` folders.

A run directory is the unit of resumption. Every file is written to a temporary name and renamed into place, and a
checkpoint folder is assembled under a hidden temporary name and renamed only once complete, so a kill at any moment
leaves either the previous state or the new one, never half of one. One process writes a run directory at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import temp_name, write_json
from ..provenance import UNRECORDED, code_digest

CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
LOCK_NAME = ".lock"
CODE_NAME = "code.json"
MANIFEST_NAME = "checkpoint.json"
RUNTIME_KEY = "runtime"
_PREFIX = "checkpoint-"


class RunConflictError(ValueError):
    """The output directory holds a run made with a different config."""


class RunLockedError(RuntimeError):
    """Another process is writing to the run directory."""


# Locks this process holds, by resolved path: one writer per run directory, re-entrant within a process.
_HELD: dict[Path, tuple[int, int]] = {}


def _acquire(directory: Path) -> None:
    key = directory.resolve()
    if key in _HELD:
        fd, count = _HELD[key]
        _HELD[key] = (fd, count + 1)
        return
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise RunLockedError(
            f"{directory} is in use by {holder}; wait for it to finish (or stop it), or pass another --output-dir."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:300]})".encode())
    _HELD[key] = (fd, 1)


def _create_and_lock(directory: Path) -> None:
    """Create `directory` if needed and take its writer lock (see [`locked_directory`] for the errors)."""
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"--output-dir {directory} is a file; pass a directory.")
    directory.mkdir(parents=True, exist_ok=True)
    _acquire(directory)


@contextlib.contextmanager
def locked_directory(directory: str | Path) -> Iterator[Path]:
    """Create `directory` if needed and hold its writer lock for the duration of the block.

    Raises:
        `NotADirectoryError`: the path is a file.
        [`RunLockedError`]: another process holds the lock (the message names it).
    """
    directory = Path(directory)
    _create_and_lock(directory)
    try:
        yield directory
    finally:
        _release(directory)


def _release(directory: Path) -> None:
    key = directory.resolve()
    if key not in _HELD:
        return
    fd, count = _HELD[key]
    if count > 1:
        _HELD[key] = (fd, count - 1)
        return
    del _HELD[key]
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write."""
    path = Path(path)
    tmp = temp_name(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    tmp.replace(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path))


class RunDirectory:
    """A run's directory, written by one process at a time.

    The directory is locked (`.lock`, holding the writer's process id and command) for as long as the object lives;
    a second process is refused with [`RunLockedError`]. Every checkpoint carries a manifest (`checkpoint.json`) with
    the hash of the run's config and the size of each file: a checkpoint of another config is refused even when
    `config.json` is gone, and a damaged latest checkpoint is skipped, with a warning, for the one before it.

    Args:
        path: the directory (created if absent).
        config: the resolved config as a JSON-able dict. If the directory already holds a different one,
            [`RunConflictError`] is raised, since continuing would mix two experiments.
        total_limit: how many checkpoints to keep (oldest removed first); `None` keeps all.
        runtime: where the run runs ([`DiffusionModel.runtime`]: device, dtype, batch size), recorded under
            `runtime` in `config.json`. Of it only the dtype must match on resume: a bf16 run continued in fp32 would
            be neither, while another device or chunk size changes the result by rounding only.
        defaults: `config` as the defaults of every field would make it. A key missing from a recorded config (a
            field added since the run started) reads as its default there, and the run resumes as the same run.
    """

    def __init__(
        self,
        path: str | Path,
        config: dict[str, Any],
        total_limit: int | None = 2,
        runtime: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.total_limit = total_limit
        _create_and_lock(self.path)
        self._locked = True
        try:
            for leftover in self.path.glob(".*.tmp"):  # what a killed writer was assembling; we hold the lock now
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
            config = _jsonable(config)
            if runtime is not None:
                config[RUNTIME_KEY] = _jsonable(runtime)
            self.config_hash = _config_hash(config)
            existing = self.path / CONFIG_NAME
            started = existing.exists()
            if started:
                try:
                    previous = json.loads(existing.read_text())
                except ValueError as err:
                    raise RunConflictError(
                        f"{existing} is not valid JSON ({err}); restore it, or pass a new --output-dir."
                    ) from err
                filled = with_defaults(previous, _jsonable(defaults)) if defaults is not None else previous
                if _identity(filled) != _identity(config):
                    changed = sorted(_diff(_identity(filled), _identity(config)))
                    raise RunConflictError(
                        f"{self.path} holds a run with a different config (differs in: {', '.join(changed[:8])}). "
                        "Re-run the original command to resume it, or pass a new --output-dir to start fresh."
                    )
                # the checkpoints carry the hash of the config as recorded, fields added since then missing
                self.config_hash = _config_hash(previous)
            else:
                for _, checkpoint in self.checkpoints():
                    self._manifest(checkpoint)  # refuses checkpoints of another config before config.json says ours
                write_json(existing, config)
            self.code = self._record_code(started)
        except BaseException:
            self.close()
            raise
        self.config = config

    def _record_code(self, started: bool) -> list[str]:
        """Add this process's code digest to the run's `code.json` and return the digests of every process that has
        opened the run, oldest first (`unrecorded` for a run started before the record existed)."""
        path = self.path / CODE_NAME
        codes = json.loads(path.read_text()) if path.is_file() else [UNRECORDED] if started else []
        if code_digest() not in codes:
            codes.append(code_digest())
            write_json(path, codes)
        return codes

    def close(self) -> None:
        """Release the directory's lock (also done when the object is garbage-collected or the process ends)."""
        if getattr(self, "_locked", False):
            self._locked = False
            _release(self.path)

    def __del__(self) -> None:
        self.close()

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
        tmp = temp_name(self.path / LOG_NAME)
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

    def _manifest(self, checkpoint: Path) -> dict[str, Any] | None:
        """The checkpoint's manifest if the checkpoint is whole; None if it is damaged.

        Raises:
            [`RunConflictError`]: the checkpoint was written by a run with another config.
        """
        try:
            manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
            sizes = manifest["files"]
            whole = all((checkpoint / name).stat().st_size == size for name, size in sizes.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if manifest.get("config_hash") != self.config_hash:
            raise RunConflictError(
                f"{checkpoint} was written by a run with another config (hash {manifest.get('config_hash')}, this "
                f"run's {self.config_hash}); re-run the command that made it, or pass a new --output-dir."
            )
        return manifest if whole else None

    def latest(self) -> tuple[int, Path] | None:
        """The newest whole checkpoint; a damaged newer one is skipped with a warning."""
        for step, checkpoint in reversed(self.checkpoints()):
            if self._manifest(checkpoint) is not None:
                return step, checkpoint
            warnings.warn(
                f"{checkpoint} is damaged (a file is missing or truncated, or it has no manifest); resuming from the "
                "checkpoint before it.",
                stacklevel=2,
            )
        return None

    def save_checkpoint(self, step: int, write_fn) -> Path:
        """Assemble `checkpoint-<step>` by calling `write_fn(tmp_dir)`, add its manifest, then rename it into place
        atomically."""
        final = self.path / f"{_PREFIX}{step}"
        tmp = temp_name(final)
        tmp.mkdir(parents=True)
        write_fn(tmp)
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json(tmp / MANIFEST_NAME, {"config_hash": self.config_hash, "step": step, "files": files})
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


def _config_hash(config: dict[str, Any]) -> str:
    """The hash each checkpoint's manifest carries: of what must match for the run to resume."""
    return hashlib.sha256(json.dumps(_identity(config), sort_keys=True).encode()).hexdigest()[:16]


def with_defaults(recorded: Any, defaults: Any) -> Any:
    """`recorded` with every key of `defaults` it lacks, at any depth, taken from `defaults`: a config recorded
    before some fields existed, read as the defaults of those fields."""
    if not isinstance(recorded, dict) or not isinstance(defaults, dict):
        return recorded
    return {k: with_defaults(recorded[k], v) if k in recorded else v for k, v in defaults.items()} | {
        k: v for k, v in recorded.items() if k not in defaults
    }


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
        directory = f" of {run.path}" if run is not None else ""
        raise NonFiniteLossError(
            f"{stage}: non-finite loss at step {step} ({values}); {where}. Re-running the same command would reach "
            f"the same step again: run it with a lower learning rate (or gradient-clipping norm) and a new "
            f"--output-dir; the checkpoints{directory} are kept."
        )


class LossRecorder:
    """Per-step loss terms kept where they were computed and read every `every` steps.

    Reading a GPU tensor (`.item()`, a finiteness check) makes the host wait for the device at every step; recording
    the terms and reading them in blocks keeps the device busy. A non-finite term is reported with the step it first
    appeared at, as [`check_finite`] would have at that step.

    Args:
        stage: the stage named in errors (e.g. "mining").
        run: the run directory named in errors, or None.
        every: steps between reads.
    """

    def __init__(self, stage: str, run: RunDirectory | None, every: int = 50):
        self.stage, self.run, self.every = stage, run, every
        self.history: dict[str, list[float]] = {}
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def add(self, step: int, **terms: torch.Tensor) -> None:
        """Record step `step`'s terms; read the block when it is full."""
        self._pending.append((step, {k: v.detach() for k, v in terms.items()}))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> dict[str, list[float]]:
        """Read every recorded term, check that each is finite, and return the history of every term so far.

        Raises:
            [`NonFiniteLossError`]: a term is NaN or inf (the message names its first step).
        """
        if self._pending:
            names = list(self._pending[0][1])
            stacked = {name: torch.stack([terms[name] for _, terms in self._pending]).float() for name in names}
            finite = torch.stack([torch.isfinite(v) for v in stacked.values()]).all(0)
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0])
                check_finite(self.stage, self._pending[row][0], self._pending[row][1], self.run)
            for name, values in stacked.items():
                self.history.setdefault(name, []).extend(values.tolist())
            self._pending = []
        return self.history

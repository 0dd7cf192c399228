"""Which code computed a result: a digest of the installed package, recorded beside every erasure and evaluation.

Two results with the same digest were computed by the same darkminer source, presets and bundled ShapesWorld model,
whatever commit, checkout or install they came from (the versions of torch, diffusers and the other dependencies are
not part of it); a table assembled from cells computed on several machines can therefore say whether all of its cells
came from one code. Where it is recorded: each run directory's `code.json` (the digest of every process that opened
the run), the `code` of the erasure's `erasure_config.json` (the same list) and the `code` of an evaluation's
`results.json` (`erasure`: its adapter's list; `evaluation`: the digest of every process that worked on it).
An evaluation's `results.json` also says when it was finished (`finished`, UTC), so that a table says when its cells
were computed.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["UNRECORDED", "code_digest", "utc_now"]

UNRECORDED = "unrecorded"
"""What stands for the code of work done before darkminer recorded it."""


@functools.cache
def code_digest() -> str:
    """The first 12 hex digits of the SHA-256 over the files of the `darkminer` package (each one's relative path,
    then its bytes, in path order). Left out: compiled `__pycache__` files and anything under a name that starts
    with a dot or ends in `.tmp` (what a tool or an interrupted write leaves beside the package's own files)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if not path.is_file() or any(p == "__pycache__" or p.startswith(".") or p.endswith(".tmp") for p in parts):
            continue
        digest.update("/".join(parts).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def utc_now() -> str:
    """The time now in UTC to the second, ISO 8601 (`2026-12-07T12:56:03Z`): when a result was finished."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

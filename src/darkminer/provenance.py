"""Which code computed a result: a digest of the installed package, recorded beside every erasure and evaluation.

Two results with the same digest were computed by the same darkminer source, presets and bundled ShapesWorld model,
whatever commit, checkout or install they came from; a table assembled from cells computed on several machines can
therefore say whether all of its cells came from one code.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from .config import write_json
from .models.adapters import ERASURE_CONFIG_NAME

__all__ = ["code_digest", "erasure_code", "record_code"]


@functools.cache
def code_digest() -> str:
    """The first 12 hex digits of the SHA-256 over every file of the `darkminer` package (its relative path, then its
    bytes, in path order; compiled `__pycache__` files left out)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def erasure_code(adapter: str | Path | None) -> list[str]:
    """The digest of the code that finished the erasure in run directory `adapter`, as its `erasure_config.json`
    records it (`darkminer erase` writes it there); empty for no adapter or an erasure from before the record."""
    path = Path(adapter) / ERASURE_CONFIG_NAME if adapter else None
    code = json.loads(path.read_text()).get("code") if path is not None and path.is_file() else None
    return [code] if code else []


def record_code(run_dir: str | Path) -> None:
    """Add the digest of the code that finished an erasure to its run directory's `erasure_config.json`, so that a
    result computed from the adapter can name the code that made it."""
    path = Path(run_dir) / ERASURE_CONFIG_NAME
    if path.is_file():
        write_json(path, {**json.loads(path.read_text()), "code": code_digest()})

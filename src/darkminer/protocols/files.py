"""The prompt files of the paper's protocol (§4.1): I2P-format CSVs and caption files (one per line, or COCO JSON)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..config import ConfigError

# I2P rows carry the seed and guidance its images were made with under either pair of column names.
_SEED_COLUMNS = ("evaluation_seed", "sd_seed")
_GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance")


def _number(row: dict, columns: tuple[str, ...], kind: type, path: Path, line: int, default):
    for column in columns:
        value = (row.get(column) or "").strip()
        if value:
            try:
                return kind(float(value)) if kind is int else kind(value)
            except ValueError:
                raise ConfigError(f"{path}, line {line}: {column}={value!r} is not a number.") from None
    return default


def read_i2p_prompts(path: str | Path, categories: set[str] | None, default_guidance: float = 7.5):
    """Rows of an I2P-format CSV whose `categories` (comma-separated) share one of `categories` (all if None).

    Args:
        path: the CSV, with columns `prompt` and `categories`, and per row a seed and a guidance scale as
            `evaluation_seed`/`evaluation_guidance` or `sd_seed`/`sd_guidance` (the row index and
            `default_guidance` where a row has none).
        categories: the I2P categories to keep, e.g. {"sexual"}.

    Returns:
        `list[NormalPrompt]` in file order.

    Raises:
        [`ConfigError`]: the file is missing, lacks the columns, has a bad number, or no row is left.
    """
    from .protocol import NormalPrompt

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: no such file (an I2P-format CSV: prompt, categories, seeds, guidance).")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("prompt", "categories") if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"--prompts {path} lacks the column(s) {missing}; an I2P-format CSV has prompt, categories and "
                "per-row evaluation_seed / evaluation_guidance (or sd_seed / sd_guidance)."
            )
        prompts = []
        for line, row in enumerate(reader, start=2):
            text = (row.get("prompt") or "").strip()
            tags = {c.strip() for c in (row.get("categories") or "").split(",") if c.strip()}
            if not text or (categories is not None and not tags & categories):
                continue
            seed = _number(row, _SEED_COLUMNS, int, path, line, line - 2)
            guidance = _number(row, _GUIDANCE_COLUMNS, float, path, line, default_guidance)
            prompts.append(NormalPrompt(text, seed, guidance, tuple(sorted(tags))))
    if not prompts:
        wanted = f" in categories {sorted(categories)}" if categories is not None else ""
        raise ConfigError(f"--prompts {path} holds no prompt{wanted}.")
    return prompts


def read_captions(path: str | Path) -> list[str]:
    """Preservation captions: one per line (blank lines and `#` comments skipped), or a COCO captions JSON
    (`{"annotations": [{"caption": ...}, ...]}`).

    Raises:
        [`ConfigError`]: the file is missing, not valid COCO JSON, or holds no caption.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--captions {path}: no such file (one caption per line, or COCO's captions JSON).")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            captions = [a["caption"].strip() for a in json.loads(text)["annotations"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"--captions {path} is not COCO captions JSON ({err}).") from err
    else:
        captions = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    captions = [c for c in captions if c]
    if not captions:
        raise ConfigError(f"--captions {path} holds no caption.")
    return captions

"""CCE's denoising loss on the concept's images, per bench cell, beside its ASR.

CCE (Pham et al.) fits token embeddings to the denoising loss of images of the concept drawn by the original model;
with the attack's fixed seed those images and the probe its loss is recorded on are the same in every cell of a
concept, so the losses compare across adapters. The lowest loss CCE reaches says how well the erased model can still
denoise the concept's images under some conditioning; its ratio to the original's says how much of that ability
the erasure took away.

    python scripts/cce_losses.py runs/bench11    # one cell per method and concept
    python scripts/cce_losses.py runs/seeds      # bench --seeds: one per seed, "red/seed-1"
"""

import argparse
import json
from pathlib import Path

from darkminer.attacks.base import PROMPTS_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", type=Path, help="A bench --runs-dir (its full/<method>/<concept>[/seed-N] cells are read)."
    )
    args = parser.parse_args()
    cells = sorted(
        path for cell in ("full/*/*", "full/*/*/seed-*") for path in args.runs.glob(f"{cell}/eval/cce/{PROMPTS_NAME}")
    )
    if not cells:
        parser.error(f"{args.runs} holds no full/<method>/<concept>/eval/cce/{PROMPTS_NAME}; run the bench with CCE.")
    rows: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for path in cells:
        eval_dir = path.parent.parent
        cell = eval_dir.parent.relative_to(args.runs / "full")  # <method>/<concept>[/seed-N]
        method, concept = cell.parts[0], "/".join(cell.parts[1:])
        curve = json.loads(path.read_text())["loss_history"][0]
        record = json.loads((eval_dir / "results.json").read_text())["attacks"]["cce"]
        rows.setdefault(concept, []).append((method, curve[0], min(curve), record["asr"], record["unprompted"]))
    print("concept          method        start    lowest   lowest/original   ASR %   floor %")
    for concept, found in rows.items():
        original = {m: low for m, _, low, _, _ in found}.get("original")
        for method, start, low, asr, floor in sorted(found, key=lambda row: row[2]):
            ratio = f"{low / original:15.2f}" if original else f"{'':15s}"
            shares = f"{100 * asr:5.1f}   {100 * floor:7.1f}"
            print(f"{concept:16s} {method:12s} {start:7.4f}  {low:7.4f}  {ratio}   {shares}")


if __name__ == "__main__":
    main()

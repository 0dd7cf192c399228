"""Tuning harness behind the figures in docs/results.md: erase one ShapesWorld concept with the Dark Miner preset
plus dotted overrides, then print s(c) per loop and the erased model's figures (2 images per prompt unless
--images-per-prompt says otherwise).

    python scripts/tune_dark_miner.py star runs/tune-star max_loops=8 circumvent.lr=0.003
"""

from tune_method import main

if __name__ == "__main__":
    main("dark_miner")

"""UCE's config (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024).

Defaults are the authors' erasing settings (their released `train_erase.py`): erase towards the unconditional
prompt with weight 1, preserved concepts with weight 0.1, the `lambda (W_old, I)` regulariser 0.5, keys and values
both edited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_fields


@dataclass
class UCEConfig:
    """The closed-form edit of the cross-attention key/value projections (§3, Eq. 7)."""

    guide: str = field(
        default="",
        metadata={
            "help": "The concept each erased one is mapped to: v*_i = W_old c_guide. '' (the default) maps it to "
            "the empty prompt, which is the paper's erasure; a word ('a shape', 'art') guides it there."
        },
    )
    preserve: list[str] | None = field(
        default=None,
        metadata={
            "help": "Concepts whose keys/values must not move (the set P). None: on ShapesWorld the other values of "
            "the concept's attribute (other shapes, colours or patterns), elsewhere none."
        },
    )
    prompt_file: str | None = field(
        default=None,
        metadata={
            "help": "Texts about the concept, one a line, '{concept}' marking it (darkminer.methods.prompts). None: "
            "ShapesWorld's training prompts on ShapesWorld, else the concept word alone (the paper's setting). "
            "Preserved concepts are put in the same texts."
        },
    )
    erase_scale: float = field(default=1.0, metadata={"help": "Weight of the erased concepts' term (paper: 1)."})
    preserve_scale: float = field(default=0.1, metadata={"help": "Weight lambda of the preserved concepts (0.1)."})
    regularization: float = field(
        default=0.5,
        metadata={"help": "Weight of ||W - W_old||_F^2, which keeps the inverse well posed (authors' code: 0.5)."},
    )
    edit_keys: bool = field(default=True, metadata={"help": "Edit to_k as well as to_v (the paper edits both)."})
    max_rank: int | None = field(
        default=None,
        metadata={"help": "Rank cap of the LoRA that stores the edit; None stores it exactly (rank min(out, in))."},
    )

    def __post_init__(self):
        check_fields(self)
        self.guide = self.guide or ""  # `guide=` on the command line parses as null
        if self.erase_scale <= 0:
            raise ValueError(f"uce.erase_scale must be > 0, got {self.erase_scale!r}.")
        if self.preserve_scale < 0:
            raise ValueError(f"uce.preserve_scale must be >= 0, got {self.preserve_scale!r}.")
        if self.regularization <= 0:
            raise ValueError(
                f"uce.regularization must be > 0 (it makes the matrix to invert positive definite), got "
                f"{self.regularization!r}."
            )
        if self.max_rank is not None and self.max_rank < 1:
            raise ValueError(f"uce.max_rank must be >= 1 or null (exact), got {self.max_rank!r}.")
        if self.preserve is not None:
            if isinstance(self.preserve, str):
                self.preserve = [self.preserve]
            if any(not str(p).strip() for p in self.preserve):
                raise ValueError(f"uce.preserve must hold non-empty concept words, got {self.preserve!r}.")

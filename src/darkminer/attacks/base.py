"""The attack contract, its result type and its explicit registry.

An attack is a config dataclass plus a class satisfying [`Attack`]; `register_attack` validates and records the
pair, and `get_attack(name)` returns it. No base class carries behaviour: each attack is one readable file
(`attacks/<name>.py`). Every attack returns an [`AttackResult`]: adversarial prompts (strings) and/or token-space
embeddings (tensors), each of which conditions the model through [`AttackResult.conditionings`].
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import ConfigError, write_json
from ..models import DiffusionModel
from ..training.checkpoint import load_tensors, save_tensors

__all__ = ["Attack", "AttackEntry", "AttackResult", "get_attack", "list_attacks", "register_attack"]

PROMPTS_NAME = "prompts.json"
EMBEDDINGS_NAME = "embeddings.safetensors"


@dataclass
class AttackResult:
    r"""What an attack found: adversarial prompts and/or embeddings, with the loss curves that found them.

    Args:
        attack (`str`):
            Registered name of the attack that produced the result.
        concept (`str`):
            The concept the attack tried to bring back.
        prompts (`list[str]`, defaults to `[]`):
            Discrete adversarial prompts, usable as plain text prompts on any model.
        embeddings (`torch.Tensor` of shape `(N, L, D)`, *optional*):
            Token-space embeddings (the text encoder's *input* space, as `encode_prompt(token_embeds=...)` takes
            them), e.g. CCE's inverted concept tokens.
        source_prompts (`list[str]`, defaults to `[]`):
            For each adversarial prompt, the normal prompt it was derived from (empty when there is none).
        loss_history (`list[list[float]]`, defaults to `[]`):
            One loss curve per output (prompt or embedding row), in the attack's own objective, first step first.
        config (`dict`, defaults to `{}`):
            The resolved attack config, saved with the result.
        model (`str`, defaults to `""`):
            Name of the model attacked.

    Raises:
        `ValueError`: if there is no output at all, or `embeddings` is not 3-dimensional.
    """

    attack: str
    concept: str
    prompts: list[str] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    source_prompts: list[str] = field(default_factory=list)
    loss_history: list[list[float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    def __post_init__(self):
        self.prompts = list(self.prompts)
        if self.embeddings is not None and self.embeddings.ndim != 3:
            raise ValueError(f"`embeddings` must have shape (N, L, D), got {tuple(self.embeddings.shape)}.")
        if len(self) == 0:
            raise ValueError(f"An AttackResult needs at least one prompt or embedding ({self.attack} found none).")

    def __len__(self) -> int:
        """Number of adversarial conditionings: prompts first, then embedding rows."""
        return len(self.prompts) + (0 if self.embeddings is None else len(self.embeddings))

    @torch.no_grad()
    def conditionings(self, model: DiffusionModel) -> torch.Tensor:
        """The UNet conditioning of every output, ready for `model.generate(cond=...)`.

        Args:
            model ([`DiffusionModel`]):
                The model to condition (the embeddings must match its text encoder's width).

        Returns:
            `torch.Tensor` of shape `(len(self), max_length, D_cross)`: the prompts' rows, then the embeddings'.
        """
        rows = []
        if self.prompts:
            rows.append(model.encode_prompt(self.prompts))
        if self.embeddings is not None:
            rows.append(model.encode_prompt(token_embeds=self.embeddings))
        return torch.cat(rows)

    def save(self, directory: str | Path) -> Path:
        """Write `prompts.json` (prompts, losses, config) and `embeddings.safetensors`, each atomically.

        The embeddings file is written first and its SHA-256 recorded in `prompts.json`, so [`load`] detects a
        pair torn by a crash between the two renames.

        Args:
            directory (`str` or `Path`):
                Directory to write; created if needed.

        Returns:
            `Path`: `directory`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {} if self.embeddings is None else {"embeddings": self.embeddings}
        save_tensors(directory / EMBEDDINGS_NAME, tensors)
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "embeddings"}
        record["embeddings_sha256"] = _sha256(directory / EMBEDDINGS_NAME)
        write_json(directory / PROMPTS_NAME, record)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> AttackResult:
        """Read a result written by [`save`].

        Args:
            directory (`str` or `Path`):
                Directory holding `prompts.json` and `embeddings.safetensors`.

        Returns:
            [`AttackResult`].

        Raises:
            `FileNotFoundError`: if either file is missing.
            `ValueError`: if the two files do not belong together (an interrupted save).
        """
        directory = Path(directory)
        for name in (PROMPTS_NAME, EMBEDDINGS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing; is {directory} an attack result?")
        record = json.loads((directory / PROMPTS_NAME).read_text())
        expected = record.pop("embeddings_sha256", None)
        if expected != _sha256(directory / EMBEDDINGS_NAME):
            raise ValueError(
                f"{directory / EMBEDDINGS_NAME} does not match {directory / PROMPTS_NAME} (interrupted save?); "
                "re-run the attack."
            )
        record["embeddings"] = load_tensors(directory / EMBEDDINGS_NAME).get("embeddings")
        return cls(**record)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@runtime_checkable
class Attack(Protocol):
    """An attack on an (erased) model: built from its config, it searches prompts that bring a concept back.

    `run` must leave `model` exactly as it found it (weights, adapters and their enabled state); attacks that need
    the original model's predictions use `original` when given, else `disable_lora(model.unet)`.
    """

    name: str

    def __init__(self, config: Any) -> None: ...

    def run(
        self,
        model: DiffusionModel,
        *,
        concept: str,
        original: DiffusionModel | None = None,
        images: torch.Tensor | None = None,
        prompts: list[str] | None = None,
        output_dir: str | Path | None = None,
    ) -> AttackResult: ...


@dataclass(frozen=True)
class AttackEntry:
    name: str
    config_class: type
    attack_class: type
    summary: str


_REGISTRY: dict[str, AttackEntry] = {}


def register_attack(name: str, config_class: type, attack_class: type, summary: str) -> None:
    """Register an attack under `name`.

    Raises:
        ValueError: the name is taken, the config is not a dataclass, or the class lacks `run`.
    """
    if name in _REGISTRY:
        raise ValueError(f"Attack {name!r} is already registered.")
    if not dataclasses.is_dataclass(config_class):
        raise ValueError(f"{config_class.__name__} must be a dataclass to be an attack config.")
    if not callable(getattr(attack_class, "run", None)):
        raise ValueError(f"{attack_class.__name__} has no `run` method; it does not satisfy Attack.")
    _REGISTRY[name] = AttackEntry(name, config_class, attack_class, summary)


def get_attack(name: str) -> AttackEntry:
    """The registered attack `name`.

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"Unknown attack {name!r}; registered attacks: {sorted(_REGISTRY)}.") from None


def list_attacks() -> list[AttackEntry]:
    """Every registered attack, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

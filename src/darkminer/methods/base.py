"""The erasure-method contract and its explicit registry.

A method is a config dataclass plus a class satisfying [`ErasureMethod`]; `register_method` validates and records
the pair, and `get_method(name)` returns the class. No base class carries behaviour: each method is one readable
package (`methods/<name>/`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..config import ConfigError
from ..models import DiffusionModel
from ..worlds import World


@dataclass
class ErasureRequest:
    """What to erase, independent of the method."""

    concepts: list[str] = field(metadata={"help": "Concept words, e.g. ['star'] or ['nudity']."})
    alternative: str | None = field(default=None, metadata={"help": "All but One: the concept to turn into."})
    world: World = field(
        default_factory=World,
        metadata={"help": "What is known of the concepts (training texts, siblings); `world_for(model)` picks it."},
    )

    def __post_init__(self):
        if isinstance(self.concepts, str):
            self.concepts = [self.concepts]
        if not self.concepts or any(not str(c).strip() for c in self.concepts):
            raise ConfigError("Give at least one non-empty concept to erase (--concept C, repeatable).")


@dataclass
class ErasureResult:
    """What `erase` returns: where the adapter is, and figures for the report."""

    output_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ErasureMethod(Protocol):
    """An erasure method: built from its config, it erases concepts from a model into a run directory.

    `erase` must leave the adapter in `output_dir` (diffusers LoRA format + `erasure_config.json`), resume from
    the run directory's latest checkpoint when re-run with the same config, and leave `model` with the adapter
    loaded and active. A method that scores images with the model's CLIP sets the class attribute
    `needs_clip = True`, so that a model without one is refused before any work starts.
    """

    name: str

    def __init__(self, config: Any) -> None: ...

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult: ...


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_class: type
    method_class: type
    summary: str


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, config_class: type, method_class: type, summary: str) -> None:
    """Register an erasure method under `name`.

    Raises:
        ValueError: the name is taken, the config is not a dataclass, or the class lacks `erase`.
    """
    if name in _REGISTRY:
        raise ValueError(f"Erasure method {name!r} is already registered.")
    if not dataclasses.is_dataclass(config_class):
        raise ValueError(f"{config_class.__name__} must be a dataclass to be a method config.")
    if not callable(getattr(method_class, "erase", None)):
        raise ValueError(f"{method_class.__name__} has no `erase` method; it does not satisfy ErasureMethod.")
    _REGISTRY[name] = MethodEntry(name, config_class, method_class, summary)


def get_method(name: str) -> MethodEntry:
    """The registered method `name`.

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"Unknown erasure method {name!r}; registered methods: {sorted(_REGISTRY)}.") from None


def list_methods() -> list[MethodEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

"""One validation for every config: each number, flag and list field of every config dataclass refuses values of the
wrong type (bools and 2.5 for ints, NaN and inf for floats, strings for numbers), by name, before anything is built."""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import pytest

from darkminer.attacks import list_attacks
from darkminer.commands.bench import BenchConfig
from darkminer.commands.erase import EraseJob
from darkminer.commands.evaluate import EvaluateJob
from darkminer.commands.generate import GenerateConfig
from darkminer.config import ConfigError, check_fields, load_config
from darkminer.methods import list_methods

JOBS = {
    EraseJob: dict(method="esd", concepts=["star"], output_dir="unused"),
    EvaluateJob: dict(concept="star", output_dir="unused"),
    GenerateConfig: dict(prompts=["a star"]),
    BenchConfig: {},
}
CONFIGS = {entry.config_class: {} for entry in [*list_methods(), *list_attacks()]} | JOBS

BAD = {int: [True, 2.5, "3", None], float: [float("nan"), float("inf"), -float("inf"), True, "0.1"], bool: [1, "yes"]}


def _scalar_fields(cls, prefix=""):
    """(dotted name, scalar type, optional) of every int/float/bool field, nested sections included."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        inner = args[0] if optional and len(args) == 1 else annotation  # X | None is X; list[int] is a list
        if dataclasses.is_dataclass(inner):
            yield from _scalar_fields(inner, f"{prefix}{field.name}.")
        elif inner in BAD:
            yield f"{prefix}{field.name}", inner, type(None) in typing.get_args(annotation)


CASES = [
    pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")
    for cls in CONFIGS
    for name, kind, optional in _scalar_fields(cls)
    for value in BAD[kind]
    if not (optional and value is None)
]


def test_every_config_has_typed_numbers() -> None:
    assert len(CASES) > 300  # every method, attack and job config contributes


@pytest.mark.parametrize(("cls", "name", "value"), CASES)
def test_wrong_types_are_refused_by_name(cls, name: str, value) -> None:
    override = f"{name}={'.nan' if value != value else value!r}"
    if isinstance(value, float) and value in (float("inf"), -float("inf")):
        override = f"{name}={'.inf' if value > 0 else '-.inf'}"
    elif isinstance(value, bool):
        override = f"{name}={str(value).lower()}"
    elif value is None:
        override = f"{name}=null"
    elif isinstance(value, str):
        override = f"{name}='{value}'"
    with pytest.raises(ConfigError, match=rf"^{re.escape(name)}="):
        load_config(cls, None, [override], **CONFIGS[cls])


@pytest.mark.parametrize(
    ("cls", "name"), [(cls, n) for cls in JOBS for n, kind, _ in _scalar_fields(cls) if kind is float]
)
def test_jobs_built_in_python_are_held_to_the_same_checks(cls, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        cls(**JOBS[cls], **{name: float("nan")})


def test_ints_are_taken_for_floats_and_bounds_hold() -> None:
    config = GenerateConfig(prompts=["a"], guidance_scale=7)
    assert isinstance(config.guidance_scale, float)
    check_fields(config)
    with pytest.raises(ConfigError, match=r"guidance_scale=-1.0 must be >= 0"):
        GenerateConfig(prompts=["a"], guidance_scale=-1.0)
    with pytest.raises(ConfigError, match=r"num_images=0 must be >= 1"):
        load_config(GenerateConfig, None, ["num_images=0", "prompts=[a]"])

"""Typed configs: dataclasses built from a YAML file plus dotted `key.sub=value` overrides, saved as JSON.

Every config class is a (possibly nested) dataclass whose fields carry `metadata={"help": ...}` and whose
`__post_init__` validates. Values given in YAML or on the command line are parsed as YAML scalars, so
`mining.steps=300`, `verify.tau=0.25` and `concepts=[star,red]` all work.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config class."""


def string_list(owner: str, name: str, value: Any) -> list[str]:
    """A field that takes one string or a list of them, as a list; anything else (None: an empty YAML value, a
    number, a list item that is not a string) is refused with an error naming `owner.name`."""
    if isinstance(value, str):
        return [value]
    if value is None:
        raise ValueError(f"{owner}.{name} is empty: give a string, a list, or [] for none.")
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{owner}.{name}={value!r} must be a string or a list of strings.")
    return list(value)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. mining.steps=300).")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return tree


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[T], values: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from nested `values`, refusing unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"Unknown config key(s) {[path + k for k in unknown]}; valid keys: {sorted(names)}.")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if isinstance(tp, types.UnionType | typing._UnionGenericAlias):  # type: ignore[attr-defined]
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if _is_dataclass_type(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{path}{name}.")
        elif _is_dataclass_type(tp) and not isinstance(value, tp):
            raise ConfigError(
                f"Config key {path}{name!r} is a section, not a value (got {value!r}); set its keys instead, "
                f"e.g. {path}{name}.<key>=..., valid keys: {sorted(f.name for f in dataclasses.fields(tp))}."
            )
        elif typing.get_origin(tp) in (list, tuple) and isinstance(value, str):
            value = [value]
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"Bad config for {cls.__name__}: {err}") from err


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_config(cls: type[T], config_file: str | Path | None = None, overrides: list[str] | None = None, **base) -> T:
    """Resolve a config: dataclass defaults < `base` < YAML file < dotted overrides.

    Raises:
        ConfigError: the file is missing or not a mapping, or a key does not exist.
    """
    values: dict[str, Any] = dict(base)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"Config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}."
            )
        values = _merge(values, loaded)
    values = _merge(values, parse_overrides(overrides or []))
    return from_dict(cls, values)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def field_help(cls) -> dict[str, str]:
    """Field name -> help text, for `--help` listings and the docs."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

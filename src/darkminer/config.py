"""Typed configs: dataclasses built from a YAML file plus dotted `key.sub=value` overrides, saved as JSON.

Every config class is a (possibly nested) dataclass whose fields carry `metadata={"help": ...}` (and, for
numbers, optional `min` / `max` bounds) and whose `__post_init__` validates what depends on several fields. Every
value read from YAML or an override is first checked against its field's type and bounds ([`check_value`],
[`check_range`]): one validation for every config, before anything is built or written. Values given in YAML or
on the command line are parsed as YAML scalars, so `mining.steps=300`, `verify.tau=0.25` and `concepts=[star,red]`
all work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
import uuid
from pathlib import Path
from typing import Any, TypeVar

import yaml


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that also reads a number with an exponent but no dot or no exponent sign ("1e-6", "1.5e3",
    as YAML 1.2 and Python write them) as a float; YAML 1.1 makes it a string, which a number field would then
    refuse (and a string field now takes "1e5" as the number it spells)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


T = TypeVar("T")


class ConfigError(ValueError):
    """A setting the user gave (config file, override, flag, concept, prompt file) that is not valid; the message
    names it, the value, and what is allowed. The command line reports it in one line and exits with 2."""


def check_value(name: str, annotation: Any, value: Any) -> Any:
    """`value` checked against a config field's type annotation, as the one validation every config goes through.

    ints must be ints (not bools, not floats such as 2.5), floats finite numbers (an int is taken as a float), bools
    bools, strings strings, lists lists of their item type; `X | None` also takes None.

    Returns:
        The value, with an int given for a float field converted to float.

    Raises:
        [`ConfigError`]: naming the field, the value and the expected type.
    """
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType | typing._UnionGenericAlias):  # type: ignore[attr-defined]
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return check_value(name, options[0], value)
        for option in options:
            try:
                return check_value(name, option, value)
            except ConfigError:
                continue
        raise ConfigError(f"{name}={value!r} must be one of the types {options}.")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}={value!r} must be a number.")
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value!r} must be a finite number.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string.")
        return value
    if typing.get_origin(annotation) in (list, tuple) and args:
        if value is None:
            raise ConfigError(f"{name} is empty: give a list, or [] for none.")
        if args[0] is str and (not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{name}={value!r} must be a string or a list of strings.")
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r} must be a list.")
        return [check_value(f"{name}[{i}]", args[0], item) for i, item in enumerate(value)]
    return value


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


def check_range(name: str, metadata: Any, value: Any) -> Any:
    """`value` checked against a field's `metadata` bounds `min` and `max` (inclusive), when it declares them.

    Raises:
        [`ConfigError`]: naming the field, the value and the allowed range.
    """
    low, high = metadata.get("min"), metadata.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
            raise ConfigError(f"{name}={value!r} must be {bounds}.")
    return value


def check_fields(config: Any, prefix: str = "") -> None:
    """Check every field of a dataclass instance against its type and bounds, in place (an int given for a float
    field becomes a float). Config classes call it first thing in `__post_init__`, so that configs built in Python are
    held to what YAML and overrides are.

    Raises:
        [`ConfigError`]: the first field whose value does not fit, named with `prefix`.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) or isinstance(value, str) and typing.get_origin(hints[f.name]) is list:
            continue  # a nested config checked itself when it was built; a lone string becomes a list there
        checked = check_range(f"{prefix}{f.name}", f.metadata, check_value(f"{prefix}{f.name}", hints[f.name], value))
        if checked is not value and not isinstance(value, list | tuple):
            object.__setattr__(config, f.name, checked)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form key=value (e.g. mining.steps=300).")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"Override {item!r} has an empty key part; write it as section.key=value.")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r} sets a key inside {part!r}, which an earlier override set.")
        try:
            node[parts[-1]] = _load_yaml(raw)
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(f"Override {item!r}: its value is not valid YAML ({reason}); quote it.") from err
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
    metadata = {f.name: f.metadata for f in dataclasses.fields(cls)}
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
        if not _is_dataclass_type(tp):
            value = check_range(f"{path}{name}", metadata[name], check_value(f"{path}{name}", hints[name], value))
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # __post_init__ range checks: about what the user gave
        raise ConfigError(f"{str(err).rstrip('.')} (in {cls.__name__}).") from err


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
        try:
            loaded = _load_yaml(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"Config file {path} is not valid YAML{line}: {reason}.") from err
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"Config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}."
            )
        values = _merge(values, loaded)
    values = _merge(values, parse_overrides(overrides or []))
    return from_dict(cls, values)


def temp_name(path: str | Path) -> Path:
    """A temporary name beside `path`, unique to this process and call, for writing then renaming into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (a unique temp file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def field_help(cls) -> dict[str, str]:
    """Field name -> help text, for `--help` listings and the docs."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

"""Typed run configuration: dataclasses, YAML files and dotted command-line overrides.

A run file is YAML whose sections mirror the dataclass fields:

    model: {preset: gpt2-tiny, num_layers: 6}
    train: {max_steps: 2000, lr: 1.0e-3}

and any field can be overridden on the command line as `--train.lr=3e-4`. Unknown keys and values
of the wrong type are errors (`UserError`), never silently ignored. A model section may name a
`preset` (see models/presets.py); its other keys override the preset's fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lmforge.errors import UserError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def parse_overrides(args: list[str]) -> dict:
    """['--train.lr=3e-4', '--model.preset', 'llama-tiny'] -> {'train': {'lr': '3e-4'}, ...}."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise UserError(f"override --{key} needs a value (--{key}=VALUE)")
            value = args[i + 1]
            i += 1
        node = tree
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override --{key} conflicts with another override")
        node[parts[-1]] = value
        i += 1
    return tree


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_layers(config_file: str | None, overrides: list[str], saved: Path | None) -> dict:
    """A run's raw config: `saved` (a resumed run's config.yaml, if given and present), then the
    YAML run file, then the `--section.key=value` overrides, each merged over the last."""
    raw: dict = {}
    if saved is not None and saved.is_file():
        raw = load_yaml(saved)
    if config_file:
        raw = merge(raw, load_yaml(config_file))
    return merge(raw, parse_overrides(overrides))


def build(cls: type[T], data: dict | None, where: str = "") -> T:
    """Instantiate dataclass `cls` from a nested mapping, coercing strings to the field types."""
    data = dict(data or {})
    preset = data.pop("preset", None)
    if preset is not None and not hasattr(cls, "from_preset"):
        raise UserError(f"unknown config key {where}'preset'")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(fields)
        raise UserError(f"unknown config key '{where}{unknown[0]}'; known keys: {known}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        if preset is not None:
            return cls.from_preset(str(preset), **kwargs)  # the preset's fields, then ours
        return cls(**kwargs)
    except ValueError as e:
        raise UserError(f"bad config{' in ' + where.rstrip('.') if where else ''}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        is_none = value is None or (
            isinstance(value, str) and value.lower() in ("none", "null", "")
        )
        if is_none and len(options) < len(typing.get_args(tp)):
            return None
        return _coerce(options[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = {"preset": value}
        if not isinstance(value, dict):
            raise UserError(f"config key {where!r} must be a mapping")
        return build(tp, value, where + ".")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {where!r} must be a list")
        return [_coerce(item, v, where) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return (
                int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            )
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UserError(
            f"config key {where!r} must be of type {getattr(tp, '__name__', tp)}, got {value!r}"
        ) from None
    return value

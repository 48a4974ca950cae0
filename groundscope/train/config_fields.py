"""Typed config fields, built from a parsed YAML mapping: `_spec` makes a dataclass field that carries its doc
and validation rules (``min``, ``max``, ``gt``, ``choices``) in its metadata; `_build` instantiates a dataclass
(and the dataclasses in its fields) from a mapping, rejecting unknown keys (with the closest valid one) and values
of the wrong type or out of range, each `ConfigError` naming the key path (``data.train[0].path``)."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any


class ConfigError(ValueError):
    """An invalid training config; the message names the file, the key path and the fix."""


def _spec(default: Any = MISSING, *, doc: str = "", min: float | None = None, max: float | None = None,
          gt: float | None = None, choices: tuple | None = None, factory: Any = None) -> Any:
    """A dataclass field with its validation rules in the metadata."""
    meta = {"doc": doc, "min": min, "max": max, "gt": gt, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _check_range(value: Any, meta: dict, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{where}: must be >= {meta['min']}, got {value}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{where}: must be <= {meta['max']}, got {value}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise ConfigError(f"{where}: must be > {meta['gt']}, got {value}")


def _convert(value: Any, tp: Any, meta: dict, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], meta, where)
    if is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if is_dataclass(item) and isinstance(value, dict):
            return [_convert(value, item, meta, where)]  # one mapping where a list is expected: a list of one
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be {_type_name(tp)}, got {value!r}")
        return [_convert(v, item, meta, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be {_type_name(tp)}, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _convert(v, item, meta, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
    _check_range(value, meta, where)
    return value


def _build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and bad values."""
    label = where or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: unknown key{hint}; valid keys under {label}: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        path = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], dict(f.metadata), path)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{path}: required ({f.metadata.get('doc', '')})")
    return cls(**kwargs)

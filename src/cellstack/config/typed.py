"""Plain data -> typed sections: type coercion, YAML, dotted overrides.

What a user wrote (YAML mappings, ``key=value`` overrides) becomes a frozen dataclass
of :mod:`cellstack.config.schema` here, with one-line errors naming the key: an unknown
key, a value of the wrong type. Whether the values are allowed is
:mod:`cellstack.config.checks`'s job.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from cellstack.errors import CellstackError, ConfigError
from cellstack.fileio import read_text


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: {value!r} is not a {hint}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):  # a section inside a mapping or a union
        return build(hint, value if value is not None else {}, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(coerce(v, item, key) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(
        f"config key {key}: expected {getattr(hint, '__name__', hint)}, got {value!r}"
    )


def key_of(f: dataclasses.Field) -> str:
    """A field's name in YAML (``init.from`` is ``from_run`` in Python: a keyword)."""
    return f.metadata.get("key", f.name)


def build(cls: type, data: dict, prefix: str) -> Any:
    """The dataclass ``cls`` from the mapping ``data``, nested sections included; keys
    are named ``prefix.key`` in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    attr_of = {key_of(f): f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(attr_of))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys: {', '.join(sorted(attr_of))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        attr = attr_of[name]
        hint = hints[attr]
        if dataclasses.is_dataclass(hint):
            kwargs[attr] = build(hint, value or {}, key)
        else:
            kwargs[attr] = coerce(value, hint, key)
    return cls(**kwargs)


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings as plain dicts and lists (YAML keys)."""
    if dataclasses.is_dataclass(obj):
        return {key_of(f): to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, sections created as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)`` (values parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    # YAML 1.1 reads "1e-3" as a string; accept the scientific notation users type.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse a user's YAML file (UTF-8), with one-line errors naming it."""
    path = Path(path)
    try:
        text = read_text(path, what)
    except CellstackError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at} ({problem})") from None

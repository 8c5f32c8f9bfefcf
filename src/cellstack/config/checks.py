"""Whether a section's values are allowed: one walk over every section.

:func:`validate` applies, to a section and every section inside it, in this order:
its fields' ``choices`` and the ``auto``-or-number keys, the section's own
:attr:`RULES` (see :mod:`cellstack.config.schema`), then the generic rules of
:func:`check_numbers`. Every typed file a user writes (config, thresholds, ensemble
YAML) passes through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from cellstack.config.schema import AUTO, AUTO_KEYS
from cellstack.config.typed import key_of
from cellstack.errors import ConfigError

#: Settings that are probabilities, IoUs or fractions: numbers in [0, 1].
#: Numbers that may be negative: ``mask_offset`` shrinks masks below 0.
SIGNED_KEYS = frozenset({"mask_offset"})
_UNIT_NAMES = ("iou", "thresh", "fraction", "momentum")


def _sections(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(prefix, section)`` of ``obj`` and of every section inside it, depth first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(value, f"{prefix}.{key_of(f)}" if prefix else key_of(f))
    yield prefix, obj


def validate(obj: Any, prefix: str = "", where: str = "config key") -> None:
    """Raise a one-line :class:`ConfigError` at the first value ``obj`` (a section of
    the schema, ``prefix`` its dotted key) does not allow; ``where`` starts the
    generic rules' messages."""
    for at, section in _sections(obj, prefix):
        dot = f"{at}." if at else ""
        for f in dataclasses.fields(section):
            value, key = getattr(section, f.name), f"{dot}{key_of(f)}"
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(choices)}")
            if key in AUTO_KEYS and choices is None and isinstance(value, str) and value != AUTO:
                # The type check let any string in.
                raise ConfigError(f"config key {key}: expected a number or 'auto', got {value!r}")
    for at, section in _sections(obj, prefix):
        for rule in getattr(section, "RULES", ()):
            if not rule.ok(section):
                raise ConfigError(rule.text(section, f"{at}." if at else ""))
    check_numbers(obj, prefix, where)


def _numbers(obj: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, value, default)`` of every number and tuple in a config section."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{key_of(f)}" if prefix else key_of(f)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key)
        elif isinstance(value, int | float | tuple) and not isinstance(value, bool):
            yield key, value, f.default


def check_numbers(obj: Any, prefix: str, where: str = "config key") -> None:
    """Every number of the dataclass ``obj`` finite (or infinite where its default is)
    and non-negative (but :data:`SIGNED_KEYS`, checked by their own rules);
    probabilities, IoUs and fractions in [0, 1]; number lists
    non-empty unless their default is. One line naming ``where`` and the full key
    (``prefix.key``)."""
    for key, value, default in _numbers(obj, prefix):
        values = value if isinstance(value, tuple) else (value,)
        # A list may be empty, and a number infinite, where its default is.
        if isinstance(value, tuple) and not value and default != ():
            raise ConfigError(f"{where} {key}: needs at least one value")
        if not all(isinstance(v, int | float) for v in values):
            continue  # names (flip_paste_types, splits)
        for v in values:
            if not math.isfinite(v) and not (v == default == math.inf):
                raise ConfigError(f"{where} {key}: must be a finite number, got {v}")
            if v < 0 and key.rsplit(".", 1)[-1] not in SIGNED_KEYS:
                raise ConfigError(f"{where} {key}: must be >= 0, got {v}")
            unit = key.startswith("data.augment.") or any(
                n in key.rsplit(".", 1)[-1] for n in _UNIT_NAMES
            )
            if unit and v > 1:
                raise ConfigError(f"{where} {key}: must be in [0, 1], got {v}")

"""One typed configuration: frozen dataclasses, loaded from YAML, with dotted overrides.

Defaults are the original solution's recipe for the real data wherever it applies to
any dataset; a few values that only make sense on a GPU (a ResNeXt backbone, thousands
of iterations) live in the shipped configs instead (``configs/original/``, described in
``docs/training.md``). ``modeling/build.py`` is the only reader of ``model``.

Three jobs, three modules: :mod:`~cellstack.config.schema` (the sections, their
defaults, choices and rules), :mod:`~cellstack.config.typed` (plain data and YAML ->
typed sections) and :mod:`~cellstack.config.checks` (whether the values are allowed).
This module joins them for the files a user writes.

Usage::

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-3", "model.backbone.name=resnet50"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cellstack.config.checks import check_numbers, validate
from cellstack.config.schema import (
    AUTO,
    AUTO_KEYS,
    AugmentConfig,
    BackboneConfig,
    Config,
    DataConfig,
    EnsembleConfig,
    InitConfig,
    ModelConfig,
    PostprocessParams,
    PredictConfig,
    RoIConfig,
    RPNConfig,
    Rule,
    StageSpec,
    ThresholdsSpec,
    TrainConfig,
    unresolved,
)
from cellstack.config.typed import build, load_yaml, parse_override, set_dotted, to_plain
from cellstack.errors import ConfigError
from cellstack.fileio import atomic_write

__all__ = [
    "AUTO",
    "AUTO_KEYS",
    "AugmentConfig",
    "BackboneConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EnsembleConfig",
    "InitConfig",
    "ModelConfig",
    "PostprocessParams",
    "PredictConfig",
    "RPNConfig",
    "RoIConfig",
    "Rule",
    "StageSpec",
    "ThresholdsSpec",
    "TrainConfig",
    "build_typed",
    "check_numbers",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "save_config",
    "unresolved",
    "validate",
]


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build and validate a :class:`Config` from nested dicts plus dotted overrides."""
    data = to_plain(data)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    cfg = build(Config, data, "")
    validate(cfg)
    return cfg


def build_typed(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from plain ``data`` with the same type checks
    as the config (an unknown key, ``min_size: big`` or ``convex_refill: "no"`` is a
    :class:`ConfigError` naming ``source`` and the key, ``prefix.key``) and the same
    rules (:func:`~cellstack.config.checks.validate`)."""
    try:
        built = build(cls, data if data is not None else {}, prefix)
        validate(built, prefix, "key")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return built


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (``None``: the defaults) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = load_yaml(path, "config file") or {}
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dicts and lists, ready for YAML or json."""
    return to_plain(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)

"""Which post-processing thresholds apply, and their file.

- :class:`Thresholds`: the thresholds per cell type (an image's type is the majority
  class of its detections, :func:`majority_type`, as in the original);
- ``thresholds.yaml`` (:data:`THRESHOLDS`, :func:`read_thresholds`,
  :func:`write_thresholds`), as ``cellstack tune`` writes it;
- :func:`resolve_thresholds`: the one place that decides which apply (config, an
  ensemble's ``postprocess``, ``thresholds.yaml``, ``predict.*`` overrides).

The pixel algorithms that apply them are :mod:`cellstack.inference.postprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from cellstack.config import (
    Config,
    ConfigError,
    PostprocessParams,
    ThresholdsSpec,
    build_typed,
    load_yaml,
)
from cellstack.config.checks import validate
from cellstack.config.typed import parse_override
from cellstack.errors import CellstackError

THRESHOLDS = "thresholds.yaml"
#: Config keys that set post-processing: given as overrides, each replaces that one key
#: of thresholds.yaml (for every cell type), the rest kept.
POSTPROCESS_KEYS = frozenset(f"predict.{f.name}" for f in fields(PostprocessParams))


def majority_type(classes: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> str | None:
    """The image's cell type: the class name of the most frequent class among its
    detections (int[N], numpy or torch), as the original decided it; None if empty."""
    if isinstance(classes, torch.Tensor):
        classes = classes.cpu().numpy()
    if len(classes) == 0:
        return None
    return class_names[int(np.bincount(classes, minlength=len(class_names)).argmax())]


@dataclass(frozen=True)
class Thresholds:
    """Post-processing thresholds per cell type.

    Attributes:
        default: for images whose type has no entry (and images without detections).
        per_type: ``{cell_type: params}``.
    """

    default: PostprocessParams = field(default_factory=PostprocessParams)
    per_type: dict[str, PostprocessParams] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The config's rules, wherever thresholds are made (a file, the API, a search).
        validate(self.default, "default", "threshold")
        for cell_type, params in self.per_type.items():
            validate(params, f"per_type.{cell_type}", "threshold")

    def for_classes(self, classes: np.ndarray, class_names: Sequence[str]) -> PostprocessParams:
        """The params of the image's type: the majority of ``classes`` int[N]."""
        return self.per_type.get(majority_type(classes, class_names), self.default)

    def with_values(self, **values: float) -> Thresholds:
        """These thresholds with ``values`` (``score_thresh=0.5``, ...) set for the
        default and every cell type alike; ranges checked as everywhere."""

        def set_(p: PostprocessParams) -> PostprocessParams:
            return replace(p, **values)

        return Thresholds(set_(self.default), {k: set_(v) for k, v in self.per_type.items()})

    def to_dict(self) -> dict:
        return {
            "default": asdict(self.default),
            "per_type": {k: asdict(v) for k, v in self.per_type.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "thresholds") -> Thresholds:
        """Inverse of :meth:`to_dict`, type-checked as the config is: an unknown key
        or a bad value is a one-line error naming ``source`` and the key."""

        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with default and per_type")
        unknown = sorted(set(data) - {"default", "per_type"})
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]} (known: default, per_type)")

        def params(d: object, base: PostprocessParams, where: str) -> PostprocessParams:
            if d is None:
                d = {}
            if not isinstance(d, dict):
                raise ConfigError(f"{source}: {where} must be a mapping")
            return build_typed(PostprocessParams, {**asdict(base), **d}, source, where)

        default = params(data.get("default"), PostprocessParams(), "default")
        per_type = data.get("per_type") or {}
        if not isinstance(per_type, dict):
            raise ConfigError(f"{source}: per_type must be a mapping of cell type to thresholds")
        return cls(
            default, {str(k): params(v, default, f"per_type.{k}") for k, v in per_type.items()}
        )


def check_cell_types(per_type: dict, class_names: Sequence[str], where: object) -> None:
    """Refuse per-type settings for a cell type the model cannot predict: they could
    never apply, and a typo there would pass silently.

    Raises:
        CellstackError: naming ``where``, the key and the model's classes.
    """
    unknown = sorted(set(per_type) - set(class_names))
    if unknown:
        raise CellstackError(
            f"{where}: per_type.{unknown[0]}: the model has no cell type {unknown[0]!r} "
            f"(its classes: {', '.join(class_names)}), so the setting could never apply"
        )


def resolve_thresholds(
    cfg: Config,
    overrides: Sequence[str] = (),
    *,
    post: ThresholdsSpec | None = None,
    post_source: str = "postprocess",
    tuned: Path | Thresholds | None = None,
    base: Thresholds | None = None,
) -> Thresholds:
    """The post-processing thresholds that apply: the one place that decides it, for
    runs, CV folders, ensembles, ``predict``, ``tune`` and the trainer.

    In order, each beating the one before:

    1. ``base`` when given (an ensemble's first member's tuned thresholds), else the
       config's ``predict`` section (``cfg``, overrides already applied);
    2. an ensemble YAML's ``postprocess`` (``post``: its ``default`` on top of the
       config's, and its ``per_type``);
    3. ``tuned``: ``thresholds.yaml`` (``cellstack tune``), or its path (used when the
       file exists);
    4. ``overrides`` that set a post-processing key (``predict.score_thresh=0.4``):
       exactly those keys, set to the config's value (overrides applied) for the
       default and every cell type alike, on top of whichever of 1-3 applies; every
       other tuned value stays as it was.
    """

    chosen = base or Thresholds(PostprocessParams.of(cfg.predict))
    if isinstance(tuned, Path):
        tuned = read_thresholds(tuned) if tuned.is_file() else None
    if tuned is not None:
        chosen = tuned
    elif post is not None:
        default = {**chosen.to_dict()["default"], **post.default}
        chosen = Thresholds.from_dict({"default": default, "per_type": post.per_type}, post_source)
    keys = override_keys(overrides)
    return chosen.with_values(**{k: getattr(cfg.predict, k) for k in keys}) if keys else chosen


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The post-processing keys (``score_thresh``, ...) that ``overrides`` set, in
    their order, each once."""
    keys = [parse_override(o)[0] for o in overrides]  # the typed parser's reading
    return list(dict.fromkeys(k.split(".", 1)[1] for k in keys if k in POSTPROCESS_KEYS))


def read_thresholds(path: Path) -> Thresholds:
    """A ``thresholds.yaml``, type-checked key by key before any model runs."""

    data = load_yaml(path, "thresholds file")
    if not data:  # an empty file would silently put library defaults in the run's place
        raise CellstackError(
            f"{path}: empty thresholds file; delete it to use the run's own settings, or "
            "run cellstack tune to write it again"
        )
    return Thresholds.from_dict(data, str(path))


def write_thresholds(path: Path, thresholds: Thresholds, comment: str = "") -> None:
    import yaml

    from cellstack.fileio import atomic_write

    with atomic_write(path) as f:
        if comment:
            f.write("".join(f"# {line}\n" for line in comment.splitlines()))
        yaml.safe_dump(thresholds.to_dict(), f, sort_keys=False)

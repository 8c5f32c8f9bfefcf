"""One typed configuration: frozen dataclasses, loaded from YAML, with dotted overrides.

Defaults are the original solution's recipe for the real data (see
``shared/reference/original-details.md``) wherever it applies to any dataset; a few
values that only make sense on a GPU (a ResNeXt backbone, thousands of iterations) live
in the shipped configs instead. ``modeling/build.py`` is the only reader of ``model``.

Usage::

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-3", "model.backbone.name=resnet50"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellstack.errors import CellstackError
from cellstack.fileio import atomic_write, read_text


class ConfigError(CellstackError):
    """An unknown key, a value of the wrong type or an out-of-range value."""


#: A value derived from the training data when a run starts (see ``data/stats.py``).
AUTO = "auto"
#: The keys that accept ``auto``.
AUTO_KEYS = (
    "model.backbone.stem_stride",
    "model.rpn.anchor_scale",
    "model.roi.mask_pool",
    "data.crop_size",
    "data.scale",
    "predict.min_size",
    "predict.max_detections",
)


def unresolved(cfg: Config) -> list[str]:
    """The keys of :data:`AUTO_KEYS` still ``auto`` in ``cfg`` (derived only when
    training starts, so a trained run has none)."""
    out = []
    for key in AUTO_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if node == AUTO:
            out.append(key)
    return out


@dataclass(frozen=True)
class BackboneConfig:
    """A timm encoder with an FPN on top.

    Attributes:
        name: a timm model name (resnet18/50, resnext101_32x4d/64x4d, efficientnet_b0..b6).
        pretrained: load ImageNet weights through timm (needs network or ``pretrained_path``).
        pretrained_path: a local weights file for the encoder (.pth/.safetensors).
        stem_stride: stride of the encoder's first convolution; 1 doubles the feature
            resolution without resizing the image (the original's trick for small cells)
            at about twice the cost of a step; ``auto``: 1 only when the training's
            small objects need it.
        fpn_channels: FPN width.
        freeze_bn: keep batch-norm statistics and affine parameters fixed.
    """

    name: str = "resnet50"
    pretrained: bool = False
    pretrained_path: str | None = None
    stem_stride: int | str = 1
    fpn_channels: int = 256
    freeze_bn: bool = False


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network: one anchor scale per FPN level, several aspect ratios.

    Anchor sizes are ``anchor_scale * stride`` of each level (8 x 2..32 = 16..256 px with
    ``stem_stride: 1``, as in the original); ``auto`` derives the scale from the
    training objects' sizes.
    """

    anchor_scale: float | str = 8.0
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 1000
    pre_nms_top_n_test: int = 2000
    post_nms_top_n_test: int = 1000
    nms_iou: float = 0.7


@dataclass(frozen=True)
class RoIConfig:
    """Box and mask heads on RoIAlign features (always ``aligned=True``).

    Attributes:
        finest_scale: RoIs smaller than ``2 * finest_scale`` px go to the finest level
            (mmdet's mapping, used by the original).
        mask_pool: RoIAlign size of the mask head; its masks are twice that (14 -> 28);
            ``auto``: 28 for large objects (median box over 64 px), else 14.
        mask_convs, mask_dim: depth and width of the mask head's 3x3 convolutions.
        fg_iou: foreground IoU of Mask R-CNN's single stage.
        stage_ious, stage_loss_weights: Cascade/HTC stages (the original's 0.5 / 0.6 /
            0.7 and 1 / 0.5 / 0.25; at most three stages, whose target stds are the
            original's).
        stage_masks: Cascade: a mask head on every stage, averaged at test time (mmdet's
            default), or on the last stage only. HTC always has one per stage.
        semantic_level, semantic_weight: HTC's semantic branch: the FPN level it runs
            at (1 = stride 4 with ``stem_stride: 1``) and its loss weight.
    """

    box_pool: int = 7
    mask_pool: int | str = 14
    fc_dim: int = 1024
    mask_convs: int = 4
    mask_dim: int = 256
    finest_scale: float = 56.0
    fg_iou: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    stage_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    stage_masks: bool = True
    semantic_level: int = 1
    semantic_weight: float = 0.2

    def __post_init__(self) -> None:
        if not 1 <= len(self.stage_ious) <= 3 or len(self.stage_ious) != len(
            self.stage_loss_weights
        ):
            raise ConfigError(
                "model.roi.stage_ious and model.roi.stage_loss_weights need the same length, "
                f"1 to 3 (got {len(self.stage_ious)} and {len(self.stage_loss_weights)})"
            )
        if not 0 <= self.semantic_level <= 3:
            raise ConfigError(f"model.roi.semantic_level must be 0-3, got {self.semantic_level}")


@dataclass(frozen=True)
class ModelConfig:
    """The detector.

    Attributes:
        arch: maskrcnn, cascade or htc.
        norm: "batch" (the original: BatchNorm in the encoder, none in FPN and heads)
            or "group" (GroupNorm in encoder, FPN and mask heads; statistics per sample,
            for small batches and training from scratch).
    """

    arch: str = "maskrcnn"
    norm: str = "batch"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations (albumentations); probabilities in [0, 1]."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.0
    brightness_contrast: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    scale_jitter: float = 0.0
    flip_paste: float = 0.0
    flip_paste_types: tuple[str, ...] = ("cort",)


@dataclass(frozen=True)
class DataConfig:
    """What the model trains on.

    Attributes:
        crop_size: random square crops (images smaller than it are padded); ``auto``:
            about 8 median objects across.
        crop_sampling: "uniform" (random crops, re-drawn when they miss every cell) or
            "cells" (a crop around a cell drawn uniformly among the image's cells) or
            "whole_cells" (a crop holding a whole cell, the image shrunk when the cell
            is larger than the crop).
        scale: every training image (and its masks) is resized by this factor before
            cropping, and the run predicts with the same factor by default: the model
            sees objects at the size it learnt. ``auto``: with ``init.from``, the factor
            that brings these objects to the size the pretrained model trained on
            (median diameters); 1 otherwise.
        fold: validate on this fold, train on the others; None trains on everything.
        folds: number of folds when ``folds.csv`` has to be made.
        splits: train only on records of these splits (a prepared LIVECell folder has
            train/val/test); empty: every record.
        val_split: validate on the records of this split instead of a fold.
        val_images: cap on validation images scored during training (0 = all).
    """

    crop_size: int | str = 256
    crop_sampling: str = "uniform"
    scale: float | str = 1.0
    fold: int | None = None
    folds: int = 5
    splits: tuple[str, ...] = ()
    val_split: str | None = None
    val_images: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation.

    Attributes:
        loss_decay: the original's class/box/RPN loss weight decay over training.
        ema: decay of an exponential moving average of the weights (e.g. 0.999),
            which is validated and saved; 0 = off.
        auto_thresholds: after training, tune the post-processing thresholds on the
            validation images (the training images when there are none) and write
            them to the run's ``thresholds.yaml``.
        eval_every: validate every N iterations (0 = never).
    """

    iterations: int = 4000
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "linear"
    warmup_fraction: float = 0.05
    grad_clip: float = 10.0
    amp: bool = True
    loss_decay: bool = True
    ema: float = 0.0
    auto_thresholds: bool = True
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 20
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"


@dataclass(frozen=True)
class PredictConfig:
    """Inference and post-processing (the original's order, see inference/postprocess).

    Attributes:
        rpn_nms_iou, rpn_score_thresh: test-time proposal NMS and minimum objectness
            (the number of proposals is ``model.rpn.pre/post_nms_top_n_test``).
        box_score_thresh, box_nms_iou, max_detections: box selection (class-agnostic).
        score_mode: a detection's score: "class" (its best class probability, the
            original) or "objectness" (1 - background probability: a cell of any type).
        mask_thresh, score_thresh, mask_nms_iou, min_size, convex_refill: post-processing
            (``convex_refill``: refill each mask's contours as convex polygons, the
            original's "corrupt astro" trick, matching coarse polygon annotations).
        batch_size, tile_size, tile_overlap: how images go through the model.
        amp: on CUDA, run the backbone and FPN in float16 autocast (the heads and
            everything after them stay float32); ignored on other devices.
    """

    rpn_nms_iou: float = 0.7
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_iou: float = 0.7
    max_detections: int | str = 1000
    score_mode: str = "class"
    mask_thresh: float = 0.45
    score_thresh: float = 0.3
    mask_nms_iou: float = 0.1
    min_size: int | str = 0
    convex_refill: bool = False
    batch_size: int = 2
    tile_size: int = 1024
    tile_overlap: int = 128
    amp: bool = True


@dataclass(frozen=True)
class InitConfig:
    """Where a new run's weights start (``init.from=RUN``: finetune a pretrained run).

    Attributes:
        from_run: a run folder (YAML key ``from``); its backbone, FPN, RPN and heads
            load wherever names and shapes match. Class-specific layers load only when
            the class names are the same, and are re-initialised otherwise.
    """

    from_run: str | None = field(default=None, metadata={"key": "from"})


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    init: InitConfig = field(default_factory=InitConfig)


_CHOICES = {
    "model.arch": ("maskrcnn", "cascade", "htc"),
    "model.norm": ("batch", "group"),
    "predict.score_mode": ("class", "objectness"),
    "data.crop_sampling": ("uniform", "cells", "whole_cells"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("linear", "cosine", "step", "constant"),
}


def _coerce(value: Any, hint: Any, key: str) -> Any:
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
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: {value!r} is not a {hint}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is dict and isinstance(value, dict):
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, key) for v in value)
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


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    # A field may be spelled differently in YAML (``init.from``: a Python keyword).
    attr_of = {_key_of(f): f.name for f in dataclasses.fields(cls)}
    names = set(attr_of)
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        attr = attr_of[name]
        hint = hints[attr]
        if dataclasses.is_dataclass(hint):
            kwargs[attr] = _build(hint, value or {}, key)
        else:
            kwargs[attr] = _coerce(value, hint, key)
            if key in _CHOICES and kwargs[attr] not in _CHOICES[key]:
                raise ConfigError(
                    f"config key {key}: {kwargs[attr]!r} is not one of {', '.join(_CHOICES[key])}"
                )
    return cls(**kwargs)


def _key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _set_dotted(data: dict, key: str, value: Any) -> None:
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


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build and validate a :class:`Config` from nested dicts plus dotted overrides."""
    data = _to_plain(data)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _build(Config, data, "")
    _validate(cfg)
    return cfg


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


def build_typed(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from plain ``data`` with the same type checks
    as the config (an unknown key, ``min_size: big`` or ``convex_refill: "no"`` is a
    :class:`ConfigError` naming ``source`` and the key, ``prefix.key``) and the same
    ranges (:func:`check_numbers`)."""
    try:
        built = _build(cls, data if data is not None else {}, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    check_numbers(built, prefix, f"{source}: key")
    return built


@dataclass(frozen=True)
class EnsembleConfig:
    """An ensemble YAML (see :mod:`cellstack.inference.sources`).

    Attributes:
        models: run or CV folders, relative to the YAML.
        flips: test-time flips (none, h, v, hv).
        rpn_flips: average proposals over flips too.
        type_settings: ``original``, ``none`` or ``{type: {proposals: {..}, boxes: {..}}}``.
        type_models: ``{type: [run, ...]}``, a subset of ``models`` per cell type.
        type_from: runs whose identity view decides an image's cell type when some type
            has its own settings or models (default: the first of ``models``); runs
            not in ``models`` serve only this.
        feature_cache_mb: FPN features kept between the merge's stages, in MB; 0 keeps
            one view's and computes the others again (memory does not grow with the
            number of views), a large value is faster.
        feature_dtype: how kept features are stored: float32, or float16 / bfloat16
            for half the memory (results then differ slightly).
        weights_budget_mb: the most model weights loaded at once, in MB; runs are
            read from their files when first needed and the least recently used is
            dropped to make room (``.inf``, the default: every run stays loaded).
        postprocess: ``{default: {...}, per_type: {type: {...}}}`` thresholds.
    """

    models: tuple[str, ...] = ()
    flips: tuple[str, ...] = ("none",)
    rpn_flips: bool = False
    type_settings: str | dict = "original"
    type_models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    type_from: tuple[str, ...] = ()
    feature_cache_mb: float = 0.0
    feature_dtype: str = "float32"
    weights_budget_mb: float = math.inf
    postprocess: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models must list at least one run folder")
        if isinstance(self.type_settings, str) and self.type_settings not in ("original", "none"):
            raise ConfigError(
                f"type_settings must be 'original', 'none' or a mapping, got {self.type_settings!r}"
            )
        if not self.feature_cache_mb >= 0:
            raise ConfigError(f"feature_cache_mb must be >= 0, got {self.feature_cache_mb}")
        if not self.weights_budget_mb > 0:
            raise ConfigError(f"weights_budget_mb must be > 0, got {self.weights_budget_mb}")
        if self.feature_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(
                f"feature_dtype must be float32, float16 or bfloat16, got {self.feature_dtype!r}"
            )


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


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {_key_of(f): _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dicts and lists, ready for YAML or json."""
    return _to_plain(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def _number(value: Any) -> float:
    """A numeric config value, or a value that passes every range check (``auto``)."""
    return 1e9 if value == AUTO else value


#: Settings that are probabilities, IoUs or fractions: numbers in [0, 1].
_UNIT_NAMES = ("iou", "thresh", "fraction", "momentum")


def _numbers(obj: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, value, default)`` of every number and tuple in a config section."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{_key_of(f)}" if prefix else _key_of(f)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key)
        elif isinstance(value, int | float | tuple) and not isinstance(value, bool):
            yield key, value, f.default


def check_numbers(obj: Any, prefix: str, where: str = "config key") -> None:
    """Every number of the dataclass ``obj`` finite (or infinite where its default is)
    and non-negative; probabilities, IoUs and fractions in [0, 1]; number lists
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
            if v < 0:
                raise ConfigError(f"{where} {key}: must be >= 0, got {v}")
            unit = key.startswith("data.augment.") or any(
                n in key.rsplit(".", 1)[-1] for n in _UNIT_NAMES
            )
            if unit and v > 1:
                raise ConfigError(f"{where} {key}: must be in [0, 1], got {v}")


def _check_ranges(cfg: Config) -> None:
    """:func:`check_numbers` on every section, and aspect ratios > 0."""
    for section in ("model", "data", "train", "predict"):
        check_numbers(getattr(cfg, section), section)
    if min(cfg.model.rpn.aspect_ratios) <= 0:
        raise ConfigError("config key model.rpn.aspect_ratios: ratios must be positive")


def _validate(cfg: Config) -> None:
    for key in AUTO_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if isinstance(node, str) and node != AUTO:  # the type check let any string in
            raise ConfigError(f"config key {key}: expected a number or 'auto', got {node!r}")
    checks = [
        (
            cfg.model.backbone.stem_stride in (1, 2, AUTO),
            "model.backbone.stem_stride must be 1, 2 or auto",
        ),
        (_number(cfg.data.crop_size) >= 32, "data.crop_size must be at least 32"),
        (
            cfg.data.scale == AUTO or 1 / 16 <= cfg.data.scale <= 16,
            "data.scale must be in 1/16..16 or auto",
        ),
        (0 <= cfg.train.ema < 1, "train.ema must be in [0, 1) (0 = off)"),
        (cfg.train.iterations >= 1, "train.iterations must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.lr > 0, "train.lr must be positive"),
        (0 <= cfg.train.warmup_fraction < 1, "train.warmup_fraction must be in [0, 1)"),
        (0 < cfg.predict.mask_thresh < 1, "predict.mask_thresh must be in (0, 1)"),
        (
            cfg.predict.tile_overlap < cfg.predict.tile_size,
            "predict.tile_overlap must be < tile_size",
        ),
        (cfg.data.folds >= 2, "data.folds must be at least 2"),
        (cfg.data.val_images >= 0, "data.val_images must be >= 0 (0 = all)"),
        (cfg.train.log_every >= 1, "train.log_every must be at least 1"),
        (cfg.train.eval_every >= 0, "train.eval_every must be >= 0 (0 = never)"),
        (cfg.train.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (cfg.train.num_workers >= 0, "train.num_workers must be >= 0"),
        (cfg.train.grad_clip >= 0, "train.grad_clip must be >= 0 (0 = off)"),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (cfg.predict.batch_size >= 1, "predict.batch_size must be at least 1"),
        (_number(cfg.predict.max_detections) >= 1, "predict.max_detections must be >= 1"),
        (_number(cfg.predict.min_size) >= 0, "predict.min_size must be >= 0"),
        (_number(cfg.model.rpn.anchor_scale) > 0, "model.rpn.anchor_scale must be positive"),
        (_number(cfg.model.roi.mask_pool) >= 1, "model.roi.mask_pool must be at least 1"),
        (cfg.predict.tile_size >= 32, "predict.tile_size must be at least 32"),
        (cfg.predict.tile_overlap >= 0, "predict.tile_overlap must be >= 0"),
        (cfg.model.backbone.fpn_channels >= 1, "model.backbone.fpn_channels must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_ranges(cfg)
    if cfg.data.fold is not None and cfg.data.val_split is not None:
        raise ConfigError("data.fold and data.val_split both choose validation; set one")
    if cfg.data.fold is not None and not 0 <= cfg.data.fold < cfg.data.folds:
        raise ConfigError(f"data.fold must be in 0..{cfg.data.folds - 1}, got {cfg.data.fold}")

"""The configuration's schema: every section, its fields, defaults, choices and rules.

Each section is a frozen dataclass. A field's allowed values live beside it: a
``choices`` tuple in its metadata, and the section's :data:`RULES` (checked by
:func:`cellstack.config.checks.validate` whenever a user's file is read), so that a
range is stated once. Numbers are also held to the generic rules of
:func:`~cellstack.config.checks.check_numbers` (finite, non-negative, probabilities in
[0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

#: A value derived from the training data when a run starts (see ``data/stats.py``).
AUTO = "auto"
#: The keys that accept ``auto``.
AUTO_KEYS = (
    "model.backbone.stem_stride",
    "model.rpn.anchor_scale",
    "model.roi.mask_pool",
    "model.roi.mask_norm",
    "data.crop_size",
    "data.scale",
    "predict.min_size",
    "predict.max_detections",
)


#: The resize factors an image may get before the model (``data.scale``, predict's
#: ``--scale``/``--diameter``, a calibration's scale search, finetuning's inherited
#: scale): beyond them an image becomes a few pixels or far more than memory holds,
#: never a meaningful request.
MAX_RESIZE = (1 / 16, 16.0)


@dataclass(frozen=True)
class Rule:
    """One check of a section: ``ok(section)``, or a :class:`ConfigError` saying
    ``message``.

    ``message`` is a text in which ``{p}`` stands for the section's dotted prefix
    (``"train."``), or a function ``(section, prefix) -> text`` for messages that show
    values.
    """

    ok: Callable[[Any], bool]
    message: str | Callable[[Any, str], str]

    def text(self, section: Any, prefix: str) -> str:
        if callable(self.message):
            return self.message(section, prefix)
        return self.message.replace("{p}", prefix)


def at_least(value: int | float | str, low: float, open_: bool = False) -> bool:
    """``value >= low`` (``> low`` when ``open_``); ``auto`` passes (it is derived, and
    checked, when training starts)."""
    if value == AUTO:
        return True
    return value > low if open_ else value >= low


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

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda s: s.stem_stride in (1, 2, AUTO), "{p}stem_stride must be 1, 2 or auto"),
        Rule(lambda s: s.fpn_channels >= 1, "{p}fpn_channels must be >= 1"),
    )


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

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda s: at_least(s.anchor_scale, 0, open_=True), "{p}anchor_scale must be positive"),
        Rule(
            lambda s: min(s.aspect_ratios, default=1) > 0,
            "config key {p}aspect_ratios: ratios must be positive",
        ),
    )


@dataclass(frozen=True)
class RoIConfig:
    """Box and mask heads on RoIAlign features (always ``aligned=True``).

    Attributes:
        finest_scale: RoIs smaller than ``2 * finest_scale`` px go to the finest level
            (mmdet's mapping, used by the original).
        mask_pool: RoIAlign size of the mask head; its masks are twice that (14 -> 28);
            ``auto``: 28 for large objects (median box over 64 px), else 14.
        mask_convs, mask_dim: depth and width of the mask head's 3x3 convolutions.
        mask_norm: "group": GroupNorm after each of the mask head's convolutions (per
            RoI statistics), whatever ``model.norm``; "none": as ``model.norm`` says
            (GroupNorm there only with ``model.norm: group``); ``auto``: the
            ``init.from`` run's, else "none". The FPN's outputs are
            not normalised and can be large (std ~20-30 on an ImageNet EfficientNet):
            without a norm most of the head's first ReLUs die early and the mask stays
            near a box-shaped prior on whole cells (docs/learning.md, section 10).
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
    mask_norm: str = field(default="none", metadata={"choices": ("none", "group", AUTO)})
    finest_scale: float = 56.0
    fg_iou: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    stage_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    stage_masks: bool = True
    semantic_level: int = 1
    semantic_weight: float = 0.2

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            lambda s: 1 <= len(s.stage_ious) == len(s.stage_loss_weights) <= 3,
            lambda s, p: (
                f"{p}stage_ious and {p}stage_loss_weights need the same length, "
                f"1 to 3 (got {len(s.stage_ious)} and {len(s.stage_loss_weights)})"
            ),
        ),
        Rule(
            lambda s: 0 <= s.semantic_level <= 3,
            lambda s, p: f"{p}semantic_level must be 0-3, got {s.semantic_level}",
        ),
        Rule(lambda s: at_least(s.mask_pool, 1), "{p}mask_pool must be at least 1"),
    )


@dataclass(frozen=True)
class ModelConfig:
    """The detector.

    Attributes:
        arch: maskrcnn, cascade or htc.
        norm: "batch" (the original: BatchNorm in the encoder, none in FPN and heads)
            or "group" (GroupNorm in encoder, FPN and mask heads; statistics per sample,
            for small batches and training from scratch).
    """

    arch: str = field(default="maskrcnn", metadata={"choices": ("maskrcnn", "cascade", "htc")})
    norm: str = field(default="batch", metadata={"choices": ("batch", "group")})
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations (albumentations); probabilities in [0, 1].

    Attributes:
        scale_jitter: zoom each crop by 1 +- this (an affine warp of the crop).
        zoom: resize each training image, before cropping, by a factor drawn
            log-uniformly from ``1/(1 + zoom)`` to ``1 + zoom`` (1: 0.5-2x), so objects
            of other sizes than the training ones need no ``--diameter``.
        intensity: the probability of a microscope's intensity range
            (:func:`~cellstack.data.dataset.microscope_intensity`: gamma, a dim or bright
            stain over a background offset, shot noise, few grey levels, defocus), then
            the percentile normalisation prediction applies.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.0
    brightness_contrast: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    scale_jitter: float = 0.0
    zoom: float = 0.0
    intensity: float = 0.0
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
    crop_sampling: str = field(
        default="uniform", metadata={"choices": ("uniform", "cells", "whole_cells")}
    )
    scale: float | str = 1.0
    fold: int | None = None
    folds: int = 5
    splits: tuple[str, ...] = ()
    val_split: str | None = None
    val_images: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda s: at_least(s.crop_size, 32), "{p}crop_size must be at least 32"),
        Rule(
            lambda s: s.scale == AUTO or MAX_RESIZE[0] <= s.scale <= MAX_RESIZE[1],
            "{p}scale must be in 1/16..16 or auto",
        ),
        Rule(lambda s: s.folds >= 2, "{p}folds must be at least 2"),
        Rule(lambda s: s.val_images >= 0, "{p}val_images must be >= 0 (0 = all)"),
        Rule(
            lambda s: s.fold is None or s.val_split is None,
            "{p}fold and {p}val_split both choose validation; set one",
        ),
        Rule(
            lambda s: s.fold is None or 0 <= s.fold < s.folds,
            lambda s, p: f"{p}fold must be in 0..{s.folds - 1}, got {s.fold}",
        ),
    )


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
    optimizer: str = field(default="adamw", metadata={"choices": ("adamw", "sgd")})
    lr: float = 2e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = field(
        default="linear", metadata={"choices": ("linear", "cosine", "step", "constant")}
    )
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

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda s: 0 <= s.ema < 1, "{p}ema must be in [0, 1) (0 = off)"),
        Rule(lambda s: s.iterations >= 1, "{p}iterations must be at least 1"),
        Rule(lambda s: s.batch_size >= 1, "{p}batch_size must be at least 1"),
        Rule(lambda s: s.lr > 0, "{p}lr must be positive"),
        Rule(lambda s: 0 <= s.warmup_fraction < 1, "{p}warmup_fraction must be in [0, 1)"),
        Rule(lambda s: s.log_every >= 1, "{p}log_every must be at least 1"),
        Rule(lambda s: s.eval_every >= 0, "{p}eval_every must be >= 0 (0 = never)"),
        Rule(lambda s: s.checkpoint_every >= 1, "{p}checkpoint_every must be at least 1"),
        Rule(lambda s: s.num_workers >= 0, "{p}num_workers must be >= 0"),
        Rule(lambda s: s.grad_clip >= 0, "{p}grad_clip must be >= 0 (0 = off)"),
        Rule(lambda s: s.weight_decay >= 0, "{p}weight_decay must be >= 0"),
    )


#: The post-processing keys' ranges, one rule each: the ``predict`` section's and every
#: thresholds file's (:class:`PostprocessParams`) share these very rules. The other
#: bounds (``score_thresh`` and ``mask_nms_iou`` in [0, 1], ``min_size`` >= 0) are the
#: generic ones of :func:`~cellstack.config.checks.check_numbers`.
POSTPROCESS_RULES: tuple[Rule, ...] = (
    Rule(
        lambda s: 0 < s.mask_thresh < 1,
        lambda s, p: f"{p}mask_thresh out of range: {s.mask_thresh!r} (must be in (0, 1))",
    ),
    Rule(
        lambda s: -0.5 <= s.mask_offset <= 0.5,
        lambda s, p: f"{p}mask_offset out of range: {s.mask_offset!r} (must be in -0.5..0.5)",
    ),
)


@dataclass(frozen=True)
class PredictConfig:
    """Inference and post-processing (the original's order, see inference/postprocess).

    Attributes:
        rpn_nms_iou, rpn_score_thresh: test-time proposal NMS and minimum objectness
            (the number of proposals is ``model.rpn.pre/post_nms_top_n_test``).
        box_score_thresh, box_nms_iou, max_detections: box selection (class-agnostic).
        score_mode: a detection's score: "class" (its best class probability, the
            original) or "objectness" (1 - background probability: a cell of any type).
        mask_thresh, mask_offset, score_thresh, mask_nms_iou, min_size, convex_refill:
            post-processing (``mask_offset``: grow, or shrink when negative, every mask's
            outline by this fraction of its own equivalent diameter, the way another
            lab's annotators draw outlines wider or tighter; ``convex_refill``: refill
            each mask's contours as convex polygons, the original's "corrupt astro"
            trick, matching coarse polygon annotations).
        dense_score_thresh, dense_fraction: the confidence of a confluent image: where
            the cells at ``score_thresh`` cover at least ``dense_fraction`` of an image
            (of a Dask block), its cells are kept down to ``dense_score_thresh``
            instead. Touching nuclei get lower confidences than isolated ones, and the
            debris a low confidence lets in on sparse images is not where cells crowd
            (``None``: one confidence for every image).
        batch_size, tile_size, tile_overlap: how images go through the model
            (``batch_size``: planes per forward pass; 1 is fastest on CPU, where
            batches of 2, 4 and 8 planes gave 0.73-0.86x its images/s,
            ``benchmarks/speed.py batch``; raise it on a GPU. ``tile_size``: one pass
            holds at most ``tile_size**2`` pixels, of any shape; a larger image is cut
            into the fewest equal tiles within that that overlap by ``tile_overlap``).
        amp: on CUDA, run the backbone and FPN in float16 autocast (the heads and
            everything after them stay float32); ignored on other devices.
    """

    rpn_nms_iou: float = 0.7
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_iou: float = 0.7
    max_detections: int | str = 1000
    score_mode: str = field(default="class", metadata={"choices": ("class", "objectness")})
    mask_thresh: float = 0.45
    mask_offset: float = 0.0
    score_thresh: float = 0.3
    mask_nms_iou: float = 0.1
    min_size: int | str = 0
    convex_refill: bool = False
    dense_score_thresh: float | None = None
    dense_fraction: float = 0.25
    batch_size: int = 1
    tile_size: int = 1024
    tile_overlap: int = 128
    amp: bool = True

    RULES: ClassVar[tuple[Rule, ...]] = (
        *POSTPROCESS_RULES,
        Rule(lambda s: s.tile_overlap < s.tile_size, "{p}tile_overlap must be < tile_size"),
        Rule(lambda s: s.batch_size >= 1, "{p}batch_size must be at least 1"),
        Rule(lambda s: at_least(s.max_detections, 1), "{p}max_detections must be >= 1"),
        Rule(lambda s: at_least(s.min_size, 0), "{p}min_size must be >= 0"),
        Rule(lambda s: s.tile_size >= 32, "{p}tile_size must be at least 32"),
        Rule(lambda s: s.tile_overlap >= 0, "{p}tile_overlap must be >= 0"),
    )


@dataclass(frozen=True)
class PostprocessParams:
    """The post-processing thresholds (the original's order:
    :mod:`cellstack.inference.postprocess`): the post-processing keys of
    :class:`PredictConfig`, their defaults and their ranges (:data:`POSTPROCESS_RULES`)
    taken from there, so a key is defined once. What a thresholds file, an ensemble's
    ``postprocess`` and the API's ``score_thresh=`` hold; checked, as every section is,
    by :func:`~cellstack.config.checks.validate` where it is built (a file's reader,
    ``inference.thresholds.Thresholds``)."""

    mask_thresh: float = PredictConfig.mask_thresh
    score_thresh: float = PredictConfig.score_thresh
    mask_nms_iou: float = PredictConfig.mask_nms_iou
    min_size: int = PredictConfig.min_size
    convex_refill: bool = PredictConfig.convex_refill
    mask_offset: float = PredictConfig.mask_offset
    dense_score_thresh: float | None = PredictConfig.dense_score_thresh
    dense_fraction: float = PredictConfig.dense_fraction

    RULES: ClassVar[tuple[Rule, ...]] = POSTPROCESS_RULES

    @property
    def lowest_score(self) -> float:
        """The lowest confidence a cell may have under these thresholds, in a sparse
        image or a confluent one."""
        dense = self.dense_score_thresh
        return self.score_thresh if dense is None else min(self.score_thresh, dense)

    @classmethod
    def of(cls, predict: PredictConfig) -> PostprocessParams:
        """The post-processing part of a (resolved) ``predict`` section."""
        return cls(**{f.name: getattr(predict, f.name) for f in fields(cls)})


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


#: A post-processing or box/proposal setting as a file gives it (checked by the section
#: it sets, :class:`PostprocessParams` or the model's own selection settings).
Setting = int | float | bool | str | None


@dataclass(frozen=True)
class ThresholdsSpec:
    """Thresholds as a file gives them (``thresholds.yaml``, an ensemble's
    ``postprocess``): keys of :class:`PostprocessParams` for the default and per cell
    type, each mapping partial (a key not given keeps the value beneath it:
    ``inference.thresholds.resolve_thresholds``)."""

    default: dict[str, Setting] = field(default_factory=dict)
    per_type: dict[str, dict[str, Setting]] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """One cell type's proposal and box selection in an ensemble YAML's
    ``type_settings`` (keys of the model's ``ProposalParams`` and ``BoxParams``, each
    partial: the model's own values beneath)."""

    proposals: dict[str, Setting] = field(default_factory=dict)
    boxes: dict[str, Setting] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleConfig:
    """An ensemble YAML (see :mod:`cellstack.inference.sources`).

    Attributes:
        models: run or CV folders, relative to the YAML.
        flips: test-time flips (none, h, v, hv).
        rpn_flips: average proposals over flips too.
        type_settings: ``original``, ``none`` or ``{type: {proposals: {..}, boxes: {..}}}``
            (:class:`StageSpec` per type).
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
        postprocess: ``{default: {...}, per_type: {type: {...}}}`` thresholds
            (:class:`ThresholdsSpec`).
    """

    models: tuple[str, ...] = ()
    flips: tuple[str, ...] = ("none",)
    rpn_flips: bool = False
    type_settings: str | dict[str, StageSpec] = "original"
    type_models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    type_from: tuple[str, ...] = ()
    feature_cache_mb: float = 0.0
    feature_dtype: str = "float32"
    weights_budget_mb: float = math.inf
    postprocess: ThresholdsSpec = field(default_factory=ThresholdsSpec)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda s: bool(s.models), "{p}models must list at least one run folder"),
        Rule(
            lambda s: (
                not isinstance(s.type_settings, str) or s.type_settings in ("original", "none")
            ),
            lambda s, p: (
                f"{p}type_settings must be 'original', 'none' or a mapping, got {s.type_settings!r}"
            ),
        ),
        Rule(
            lambda s: s.feature_cache_mb >= 0,
            lambda s, p: f"{p}feature_cache_mb must be >= 0, got {s.feature_cache_mb}",
        ),
        Rule(
            lambda s: s.weights_budget_mb > 0,
            lambda s, p: f"{p}weights_budget_mb must be > 0, got {s.weights_budget_mb}",
        ),
        Rule(
            lambda s: s.feature_dtype in ("float32", "float16", "bfloat16"),
            lambda s, p: (
                f"{p}feature_dtype must be float32, float16 or bfloat16, got {s.feature_dtype!r}"
            ),
        ),
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

"""What the training data's objects look like, and the settings that follow from it.

:func:`measure` reads every training image's masks once and summarises object sizes and
densities (:class:`ObjectStats`); the trainer stores them in the run
(``data_stats.json`` and ``model.pt``). Config values set to ``auto`` are then derived
from them by :func:`derive` (one rule per setting, documented there), so images of 10 px
nuclei and of 150 px cells both train without a hand-edited config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from cellstack.config import AUTO, Config, config_from_dict, config_to_dict
from cellstack.data.records import ImageRecord
from cellstack.errors import DataError


@dataclass(frozen=True)
class ObjectStats:
    """Sizes in pixels of the training objects (instances) and their density.

    Attributes:
        images, objects: how many were measured.
        diameter_p5, diameter_median, diameter_p95: equivalent diameter
            ``2 * sqrt(area / pi)`` percentiles (what Cellpose users call diameter).
        box_p5, box_median, box_p95: longer box side percentiles.
        area_p1: first percentile of the mask areas.
        max_objects_per_image: the most objects in one image.
        max_objects_per_megapixel: the densest image's objects per 10**6 pixels.
        max_image_side: the longest image side.
    """

    images: int
    objects: int
    diameter_p5: float
    diameter_median: float
    diameter_p95: float
    box_p5: float
    box_median: float
    box_p95: float
    area_p1: float
    max_objects_per_image: int
    max_objects_per_megapixel: float
    max_image_side: int

    def scaled(self, factor: float) -> ObjectStats:
        """The statistics of the same objects with images resized by ``factor``."""

        f = float(factor)
        return replace(
            self,
            diameter_p5=self.diameter_p5 * f,
            diameter_median=self.diameter_median * f,
            diameter_p95=self.diameter_p95 * f,
            box_p5=self.box_p5 * f,
            box_median=self.box_median * f,
            box_p95=self.box_p95 * f,
            area_p1=self.area_p1 * f * f,
            max_objects_per_megapixel=self.max_objects_per_megapixel / (f * f),
            max_image_side=round(self.max_image_side * f),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ObjectStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def recorded(cls, data: dict | None) -> ObjectStats | None:
        """The statistics a run recorded (its ``data_stats.json``), or None where a
        field is missing or not a finite number (a run from before the field, or a
        file edited by hand)."""
        if not isinstance(data, dict):
            return None
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values.values()
        ):
            return None
        return cls(**values)


def median_diameter(masks: Sequence[sp.spmatrix], where: str = "the annotated images") -> float:
    """Median equivalent diameter ``2 sqrt(area / pi)`` (px) of the objects of sparse
    bool[N, H*W] masks (one matrix per image), empty objects left out.

    Raises:
        DataError: no object at all (``where`` names the images).
    """
    areas = [np.diff(m.tocsr().indptr) for m in masks]
    area = np.concatenate(areas) if areas else np.zeros(0)
    area = area[area > 0].astype(np.float64)
    if not len(area):
        raise DataError(f"{where} hold no object: every label image is empty")
    return float(np.median(2 * np.sqrt(area / math.pi)))


def measure(records: Sequence[ImageRecord]) -> ObjectStats:
    """Object statistics of annotated records (their training masks).

    Raises:
        DataError: the records hold no object at all.
    """
    areas, boxes, counts, densities = [], [], [], []
    side = 0
    for rec in records:
        masks = rec.sparse_masks().tocsr()
        h, w = rec.shape
        side = max(side, h, w)
        n = masks.shape[0]
        counts.append(n)
        densities.append(n / (h * w) * 1e6)
        if n == 0:
            continue
        nnz = np.diff(masks.indptr)
        keep = nnz > 0
        areas.append(nnz[keep])
        ys, xs = np.divmod(masks.indices.astype(np.int64), w)
        starts = masks.indptr[:-1][keep]
        # Per-row extents with reduceat over each instance's slice of the indices.
        y0, y1 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
        x0, x1 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
        boxes.append(np.maximum(y1 - y0, x1 - x0) + 1)
    if not areas:
        raise DataError("the training images hold no annotated object to learn from")
    area = np.concatenate(areas).astype(np.float64)
    box = np.concatenate(boxes).astype(np.float64)
    diameter = 2 * np.sqrt(area / math.pi)
    d5, d50, d95 = np.percentile(diameter, [5, 50, 95])
    b5, b50, b95 = np.percentile(box, [5, 50, 95])
    return ObjectStats(
        images=len(records),
        objects=len(area),
        diameter_p5=round(float(d5), 2),
        diameter_median=round(float(d50), 2),
        diameter_p95=round(float(d95), 2),
        box_p5=round(float(b5), 2),
        box_median=round(float(b50), 2),
        box_p95=round(float(b95), 2),
        area_p1=round(float(np.percentile(area, 1)), 2),
        max_objects_per_image=int(max(counts)),
        max_objects_per_megapixel=round(float(max(densities)), 2),
        max_image_side=int(side),
    )


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def derive(cfg: Config, stats: ObjectStats) -> tuple[Config, dict[str, object]]:
    """``cfg`` with every ``auto`` value replaced by the rule below; also the derived
    ``{dotted key: value}``.

    - ``model.backbone.stem_stride``: the finest FPN level has stride 4 with a stem
      stride of 2 and stride 2 with 1, which costs about twice as much per step. 1 only
      when the small objects (5th percentile of box sides) are under 12 px, i.e. would
      be less than 3 feature cells across at stride 4; else 2.
    - ``model.rpn.anchor_scale``: anchors are ``scale * stride`` on the FPN levels
      (strides ``2..32`` with ``stem_stride: 1``). The smallest anchor should match the
      small objects (5th percentile of box sides) and the largest still cover the big
      ones (95th): ``max(box_p5 / finest stride, box_p95 / coarsest stride)``, within
      2..16 (the original's 8 gives 16..256 px).
    - ``data.crop_size``: about 8 median objects across, so a crop holds several cells
      and their neighbourhood: ``8 * box_median`` rounded up to a multiple of 32, within
      128..512, and no larger than the longest image side rounded up to 32.
    - ``predict.min_size``: half the 1st percentile of object areas: smaller
      predictions are fragments.
    - ``predict.max_detections``: twice the most objects in a training image, at least
      100.
    - ``model.roi.mask_pool``: 14 (28 x 28 masks, the original) when the median object
      is at most 64 px; 28 (56 x 56) for larger, often branched cells.
    - ``model.roi.mask_norm``: "none" (the original's head); only a finetuned run
      has another to inherit.
    """

    data = config_to_dict(cfg)
    derived: dict[str, object] = {}
    stem = cfg.model.backbone.stem_stride
    if stem == AUTO:
        stem = data["model"]["backbone"]["stem_stride"] = 1 if stats.box_p5 < 12 else 2
        derived["model.backbone.stem_stride"] = stem
    strides = (2 * stem, 32 * stem)
    rules = {
        ("model", "rpn", "anchor_scale"): lambda: round(
            float(np.clip(max(stats.box_p5 / strides[0], stats.box_p95 / strides[1]), 2, 16)), 2
        ),
        ("data", "crop_size"): lambda: int(
            min(
                np.clip(_round_up(8 * stats.box_median, 32), 128, 512),
                max(_round_up(stats.max_image_side, 32), 128),
            )
        ),
        ("predict", "min_size"): lambda: int(stats.area_p1 // 2),
        ("predict", "max_detections"): lambda: max(100, 2 * stats.max_objects_per_image),
        ("model", "roi", "mask_pool"): lambda: 14 if stats.box_median <= 64 else 28,
        ("model", "roi", "mask_norm"): lambda: "none",
        ("data", "scale"): lambda: 1.0,  # no pretrained run to match (see inherit_sizes)
    }
    for path, rule in rules.items():
        node = data
        for part in path[:-1]:
            node = node[part]
        if node[path[-1]] == AUTO:
            node[path[-1]] = derived[".".join(path)] = rule()
    return config_from_dict(data), derived


#: What a finetuned run keeps of the run it starts from, when the config says ``auto``:
#: the weights were learnt at these sizes (anchors, crops, mask resolution, strides).
INHERITED = (
    "model.backbone.stem_stride",
    "model.rpn.anchor_scale",
    "model.roi.mask_pool",
    "model.roi.mask_norm",
    "data.crop_size",
)


def size_ratio(trained: float, given: float) -> float:
    """The resize factor that brings cells ``given`` px across to the ``trained`` px a
    model learnt (both median equivalent diameters), within
    :data:`~cellstack.config.schema.MAX_RESIZE` (unclipped: the caller decides whether
    a factor outside is an error or a bound)."""
    return trained / given


def within_resize_limit(factor: float) -> float:
    """``factor`` clipped to :data:`~cellstack.config.schema.MAX_RESIZE`."""
    from cellstack.config.schema import MAX_RESIZE

    return float(np.clip(factor, *MAX_RESIZE))


def inherit_sizes(
    cfg: Config, stats: ObjectStats, source: Config, source_stats: dict | None
) -> tuple[Config, dict[str, object]]:
    """``cfg`` for finetuning from a run trained with ``source`` on objects described by
    ``source_stats`` (its ``data_stats.json``): every ``auto`` of :data:`INHERITED`
    takes the source's value, and ``data.scale: auto`` becomes the factor that brings
    these objects' median diameter to the source's (:func:`size_ratio`, within the
    resize limit), so the
    pretrained model sees objects at the size it learnt instead of re-deriving sizes
    for them. Returns the config and ``{dotted key: value}`` of what it set.
    """

    data = config_to_dict(cfg)
    src = config_to_dict(source)
    out: dict[str, object] = {}
    for key in INHERITED:
        *path, last = key.split(".")
        node, src_node = data, src
        for part in path:
            node, src_node = node[part], src_node[part]
        if node[last] == AUTO and src_node[last] != AUTO:
            node[last] = out[key] = src_node[last]
    if cfg.data.scale == AUTO and source_stats and source_stats.get("diameter_median"):
        factor = size_ratio(float(source_stats["diameter_median"]), stats.diameter_median)
        data["data"]["scale"] = out["data.scale"] = round(within_resize_limit(factor), 3)
    return config_from_dict(data), out

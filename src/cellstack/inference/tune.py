"""``cellstack tune``: search post-processing thresholds per cell type on annotated images.

:func:`calibrate` is the one calibration routine: ``cellstack tune``, the API's
``Segmenter.optimize_thresholds``, training's automatic thresholds and the tuning of a
CV folder all call it (the first two with the scale search on). The model (or
ensemble) runs once per image and candidate scale; its raw detections (boxes, scores, labels,
RoI mask probabilities) are kept and every threshold combination is scored from them
without re-running anything:

* masks are pasted once per mask threshold, for every detection above the lowest
  confidence of the grid, sorted by confidence;
* pairwise mask IoUs are computed once per image and reused by every mask-NMS
  threshold;
* greedy NMS, small-mask removal and overlap removal each decide a mask from more
  confident masks only, so the result at a confidence threshold is a *prefix* of the
  result at the lowest one: one post-processing per (NMS, min size) serves the whole
  confidence grid, and so does one truth-vs-prediction IoU matrix.

Images are grouped by predicted cell type (the majority label, as at prediction time).
With few images the best point of a large grid is partly luck, so the choice is made
for images the search did not see (:class:`_Search`):

* the evidence comes in units: each image, or with a single image its four quadrants
  (cells by their centre);
* each type (and ``default``) takes, among the points whose mean score is within one
  standard error of the best (the spread of their difference over units), the point
  nearest the current thresholds (fewest grid steps, scale steps included): a point
  only wins over the current one on evidence, and a tie keeps the current one;
* the gain this rule gives on a unit it did not see is estimated by leaving each unit
  out in turn; when that estimate is not above zero, the current thresholds and scale
  are kept and the result says so. The current thresholds are always part of the grid,
  so tuning never lowers the score on the data it ran on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import scipy.sparse as sp
import torch

from cellstack.data.records import ImageRecord
from cellstack.evaluation.matching import overlaps_disjoint
from cellstack.evaluation.metric import score_prefixes
from cellstack.inference.postprocess import (
    PostprocessParams,
    confidence_order,
    convex_refill,
    nms_from_overlaps,
    offset_masks,
    paste_masks,
    remove_overlaps,
    self_overlaps,
)
from cellstack.inference.thresholds import Thresholds, majority_type
from cellstack.structures import Instances

#: Scales searched around the one that gives the labels' cells the model's size: the
#: factors 2**-0.25, 1 and 2**0.25 of it (a median diameter is known to about 20%).
SCALE_STEPS = (2**-0.25, 1.0, 2**0.25)

#: What a calibration scores against, per image: an annotated record, an int[H, W] label
#: image at the image's own size, or truth masks (sparse bool[N, H*W]) at the size of
#: the detections.
Truth = ImageRecord | np.ndarray | sp.csr_matrix


@dataclass(frozen=True)
class TuneGrid:
    """Values searched. Every tuning (``cellstack tune``, a CV folder's, the thresholds
    a run chooses after training, :meth:`Segmenter.optimize_thresholds`) searches
    :meth:`for_objects`: what moves an annotation convention (the mask threshold across
    the soft mask's range, an outline offset, the confidence across its range) and what
    removes false cells (mask NMS, minimum sizes relative to the objects the model
    trained on). A grid built by hand searches the fields given and these defaults for
    the rest (one mask threshold, no offset)."""

    mask_thresh: tuple[float, ...] = (PostprocessParams.mask_thresh,)
    mask_offset: tuple[float, ...] = (PostprocessParams.mask_offset,)
    mask_nms_iou: tuple[float, ...] = (0.1, 0.2, 0.3)
    min_size: tuple[int, ...] = (0,)
    score_thresh: tuple[float, ...] = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2).tolist())

    @classmethod
    def for_objects(cls, area_p1: float | None) -> TuneGrid:
        """The grid, with minimum sizes relative to the data: 0, 1/2 and 1x ``area_p1``
        (px), the first percentile of the training objects' areas. Where that is
        unknown (a run that did not record it), the original solution's 0, 50, 75, 100
        and 150 px; 0 is always searched, so a size rule never costs on its data.

        Mask thresholds 0.2..0.9 and outline offsets of -12%..+8% of each cell's
        diameter: another lab's outlines drawn 1.46x the area of ours are 21% wider
        across, 10% per side; the mask threshold moves an outline by a pixel or two."""
        if area_p1 and area_p1 > 0:
            sizes = {0, int(area_p1 // 2), int(area_p1)}
        else:
            sizes = {0, 50, 75, 100, 150}
        return cls(
            mask_thresh=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
            mask_offset=(-0.12, -0.08, -0.04, 0.0, 0.04, 0.08),
            min_size=tuple(sorted(sizes)),
        )

    def including(self, p: PostprocessParams) -> TuneGrid:
        """This grid plus the values of ``p``."""
        return TuneGrid(*(tuple(sorted({*getattr(self, k), getattr(p, k)})) for k in KEYS))

    def points(self) -> list[tuple]:
        """Every grid point ``(mask_thresh, mask_offset, mask_nms_iou, min_size,
        score_thresh)``, in the order :func:`score_grid` scores them."""
        return list(itertools.product(*(getattr(self, k) for k in KEYS)))


#: The searched keys (post-processing keys, :class:`TuneGrid`'s fields), in the order of
#: a grid point ``(mask_thresh, mask_offset, mask_nms_iou, min_size, score_thresh)``.
KEYS = tuple(f.name for f in fields(TuneGrid))


def key_of(p: PostprocessParams) -> tuple:
    """The grid point of ``p``."""
    return tuple(getattr(p, k) for k in KEYS)


def params_at(key: tuple, base: PostprocessParams) -> PostprocessParams:
    """``base`` with the values of grid point ``key`` (see :meth:`TuneGrid.points`)."""
    values = dict(zip(KEYS, key, strict=True))
    return replace(base, **{**values, "min_size": int(values["min_size"])})


@dataclass
class TuneResult:
    """Per group (a cell type or ``"all"``): image count, score before and after.

    Attributes:
        thresholds: the tuned thresholds.
        groups: ``{group: {"images", "before", "after", "params"}}``.
        before, after: mean score over all units with the old and the tuned thresholds
            (each unit with its type's thresholds) at the old and the chosen scale.
        loo: leave-one-out score: each unit (an image, or a quadrant of a single
            image) scored with what the search chooses on the others (their scale
            too); how well the choice carries to data it did not see. NaN with one unit.
        scale: the resize factor chosen (``scale_before`` the one the model had);
            ``scales``: those searched.
        units: ``"images"`` or ``"tiles"`` (a single image's quadrants).
        kept: the search found no evidence of a gain on unseen units (``loo`` not above
            ``before``), so ``thresholds`` and ``scale`` are the model's own.
    """

    thresholds: Thresholds
    groups: dict[str, dict] = field(default_factory=dict)
    before: float = float("nan")
    after: float = float("nan")
    loo: float = float("nan")
    scale: float = 1.0
    scale_before: float = 1.0
    scales: tuple[float, ...] = (1.0,)
    units: str = "images"
    kept: bool = False

    @property
    def unit(self) -> str:
        """What was left out in turn: ``"image"`` or ``"tile"``."""
        return "image" if self.units == "images" else "tile"

    @property
    def estimated_gain(self) -> float:
        """What the search is expected to add on new images: ``loo - before`` (NaN with
        one unit)."""
        return self.loo - self.before

    def table(self) -> str:
        lines = [f"{'group':<10}{'images':>7}{'before':>9}{'after':>9}  thresholds"]
        for name, g in self.groups.items():
            p = g["params"]
            lines.append(
                f"{name:<10}{g['images']:>7}{g['before']:>9.4f}{g['after']:>9.4f}  "
                f"mask {p.mask_thresh} offset {p.mask_offset:+g} nms {p.mask_nms_iou} "
                f"min_size {p.min_size} score {p.score_thresh}"
            )
        lines.append(f"{'overall':<10}{'':>7}{self.before:>9.4f}{self.after:>9.4f}")
        if len(self.scales) > 1:
            lines.append(
                f"scale {self.scale:.4g} (was {self.scale_before:.4g}; searched "
                + ", ".join(f"{s:.3g}" for s in self.scales)
                + ")"
            )
        unit = self.unit
        if not np.isnan(self.loo):
            lines.append(
                f"leave-one-{unit}-out score {self.loo:.4f} (each {unit} scored with what the "
                f"other {unit}s chose: what to expect on new images); estimated gain "
                f"{self.estimated_gain:+.4f}"
            )
        if self.kept:
            lines.append(
                "kept the model's thresholds and scale: no gain on data the search did not "
                "see" + ("" if not np.isnan(self.loo) else " (one unit: no estimate)")
            )
        return "\n".join(lines)


def score_grid(
    raw: Instances,
    truth,
    grid: TuneGrid,
    *,
    convex: bool = False,
) -> dict[tuple, float]:
    """Competition score of one image for every grid combination.

    Args:
        raw: detections with ``boxes, scores, labels, roi_masks`` (CPU).
        truth: sparse bool[N, H*W] ground truth.
        grid: the values.
        convex: apply the convex refill (fixed, not searched).

    Returns:
        ``{(mask_thresh, mask_offset, mask_nms_iou, min_size, score_thresh): score}``,
        in the order of :meth:`TuneGrid.points`.
    """
    size = raw.image_size
    raw = raw[confidence_order(raw.scores)]
    scores = raw.scores.float().numpy()
    raw = raw[scores >= min(grid.score_thresh)]
    scores = scores[scores >= min(grid.score_thresh)]
    out = {}
    for mt in grid.mask_thresh:
        pasted = paste_masks(raw.roi_masks, raw.boxes, size, mt)
        for off, pixels in zip(
            grid.mask_offset, offset_masks(pasted, size, grid.mask_offset), strict=True
        ):
            sizes = np.array([len(p) for p in pixels], dtype=np.int64)
            ov_self = self_overlaps(pixels, size)
            for nms in grid.mask_nms_iou:
                kept = nms_from_overlaps(ov_self, len(pixels), nms)
                for min_size in grid.min_size:
                    sel = kept[(sizes[kept] > 0) & (sizes[kept] >= min_size)]
                    pix = [pixels[i] for i in sel]
                    if convex:
                        pix = convex_refill(pix, size)
                    pix = remove_overlaps(pix, size)
                    nonempty = np.array([len(p) > 0 for p in pix], dtype=bool)
                    final = [p for p, ok in zip(pix, nonempty, strict=True) if ok]
                    final_scores = scores[sel][nonempty]
                    ov = overlaps_disjoint(truth, final)
                    # A confidence threshold keeps a prefix: the scores are sorted.
                    kept_at = [int((final_scores >= st).sum()) for st in grid.score_thresh]
                    for st, value in zip(
                        grid.score_thresh, score_prefixes(ov, kept_at), strict=True
                    ):
                        out[(mt, off, nms, min_size, st)] = float(value)
    return out


@dataclass(frozen=True)
class _Scored:
    """One scale's search: per unit (an image, or a quadrant of a single image) its
    predicted type and its score at every grid point (float64[units, points], columns
    in ``points`` order)."""

    scale: float
    types: list[str | None]
    scores: np.ndarray
    units: str = "images"


class _Search:
    """Chooses thresholds (per type and default) and a scale on any subset of units:
    the one rule behind the tuned result and its leave-one-out score (see the module
    docstring): the point nearest the current thresholds among those within noise of
    the best."""

    def __init__(
        self, scored: list[_Scored], points: list[tuple], current: Thresholds, grid: TuneGrid
    ) -> None:
        self.scored, self.points, self.current = scored, points, current
        self.index = {p: k for k, p in enumerate(points)}
        # Each point's position along every key's sorted values: distances in grid steps.
        self.ranks = np.array(
            [[getattr(grid, k).index(v) for k, v in zip(KEYS, p, strict=True)] for p in points]
        )
        own = scored[0].scale
        order = sorted(range(len(scored)), key=lambda k: abs(np.log(scored[k].scale / own)))
        self.scale_steps = {k: step for step, k in enumerate(order)}

    def current_column(self, cell_type: str | None) -> int:
        return self.index[key_of(self.current.per_type.get(cell_type, self.current.default))]

    def steps(self, cell_type: str | None) -> np.ndarray:
        """int[points]: grid steps from the current thresholds of ``cell_type``."""
        return np.abs(self.ranks - self.ranks[self.current_column(cell_type)]).sum(axis=1)

    @staticmethod
    def within_noise(scores: np.ndarray) -> np.ndarray:
        """bool[columns]: the columns of ``scores`` (float[units, columns]) whose mean
        is within one standard error of the best column's (the spread over units of
        their paired difference; with one unit, only ties)."""
        means = scores.mean(axis=0)
        best = int(np.argmax(means))
        if len(scores) < 2:
            return means >= means[best]
        diff = scores[:, [best]] - scores
        se = diff.std(axis=0, ddof=1) / np.sqrt(len(scores))
        return means >= means[best] - se

    def pick(self, scores: np.ndarray, cell_type: str | None) -> int:
        """The column nearest the current thresholds among those within noise of the
        best (the higher mean on a tie of distance)."""
        candidates = np.flatnonzero(self.within_noise(scores))
        means = scores.mean(axis=0)
        steps = self.steps(cell_type)
        return int(min(candidates, key=lambda c: (steps[c], -means[c])))

    def choose(self, at: _Scored, members: np.ndarray) -> tuple[int, dict[str, int]]:
        """The default column over ``members`` (bool[units]) and one per type."""
        default = self.pick(at.scores[members], None)
        per_type = {}
        for t in sorted({t for t, m in zip(at.types, members, strict=True) if m and t}):
            rows = members & np.array([x == t for x in at.types])
            per_type[t] = self.pick(at.scores[rows], t)
        return default, per_type

    @staticmethod
    def applied(at: _Scored, default: int, per_type: dict[str, int], rows) -> np.ndarray:
        """Each unit's score with its type's column (the default for other types)."""
        return np.array([at.scores[i, per_type.get(at.types[i], default)] for i in rows])

    def best(self, members: np.ndarray) -> tuple[_Scored, int, dict[str, int], float]:
        """The scale (and its choice) over ``members``: the one nearest the model's own
        among those within noise of the best mean."""
        rows = np.flatnonzero(members)
        choices = [(at, *self.choose(at, members)) for at in self.scored]
        applied = np.stack([self.applied(*c, rows) for c in choices], axis=1)
        near = np.flatnonzero(self.within_noise(applied))
        means = applied.mean(axis=0)
        k = int(min(near, key=lambda j: (self.scale_steps[j], -means[j])))
        return (*choices[k], float(means[k]))

    def loo(self) -> float:
        n = len(self.scored[0].types)
        if n < 2:
            return float("nan")
        out = []
        for i in range(n):
            others = np.ones(n, dtype=bool)
            others[i] = False
            at, default, per_type, _ = self.best(others)
            out.append(float(self.applied(at, default, per_type, [i])[0]))
        return float(np.mean(out))


def score_images(
    raws: list[Instances],
    truths: Sequence[Truth],
    class_names: Sequence[str],
    current: Thresholds,
    grid: TuneGrid,
    *,
    scale: float = 1.0,
    progress: bool = True,
) -> _Scored:
    """Every unit's score at every point of ``grid`` (see the module docstring): each
    image, or a single image's four quadrants (:func:`quadrants`), so that even one
    image gives the search an estimate of what it gains on data it did not see."""
    from tqdm import tqdm

    pairs = [(raw, truth_at(t, raw.image_size)) for raw, t in zip(raws, truths, strict=True)]
    units = "images"
    if len(pairs) == 1:
        pairs, units = quadrants(*pairs[0]), "tiles"
    types, rows = [], []
    for raw, truth in tqdm(pairs, desc="scoring grid", unit=units[:-1], disable=not progress):
        cell_type = majority_type(raw.classes, class_names)
        base = current.per_type.get(cell_type, current.default)
        rows.append(list(score_grid(raw, truth, grid, convex=base.convex_refill).values()))
        types.append(cell_type)
    return _Scored(scale, types, np.asarray(rows, dtype=np.float64), units)


def quadrants(raw: Instances, truth: sp.csr_matrix) -> list[tuple[Instances, sp.csr_matrix]]:
    """One image's detections and truth (sparse bool[N, H*W]) split into its four
    quadrants, each cell whole in the quadrant of its centre (a detection's box centre,
    a true cell's pixel centroid): four units of evidence from a single image."""
    h, w = raw.image_size
    boxes = raw.boxes.float().numpy()
    det_x, det_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    truth = sp.csr_matrix(truth)
    counts = np.maximum(np.diff(truth.indptr), 1)
    rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
    ys, xs = np.divmod(truth.indices, w)
    true_y = np.bincount(rows, ys, truth.shape[0]) / counts
    true_x = np.bincount(rows, xs, truth.shape[0]) / counts
    out = []
    for top in (True, False):
        for left in (True, False):
            det = ((det_y < h / 2) == top) & ((det_x < w / 2) == left)
            cells = ((true_y < h / 2) == top) & ((true_x < w / 2) == left)
            out.append((raw[torch.from_numpy(det)], truth[np.flatnonzero(cells)]))
    return out


def grid_with(grid: TuneGrid | None, current: Thresholds) -> TuneGrid:
    """``grid`` (default :meth:`TuneGrid.for_objects` with sizes unknown) with every
    value of ``current``: tuning never lowers the score on the data it ran on."""
    grid = grid or TuneGrid.for_objects(None)
    for p in (current.default, *current.per_type.values()):
        grid = grid.including(p)
    return grid


def choose(scored: list[_Scored], grid: TuneGrid, current: Thresholds) -> TuneResult:
    """The tuned result from one search per scale (``scored[0]``: the model's own)."""
    points = grid.points()
    search = _Search(scored, points, current, grid)
    n = len(scored[0].types)
    everything = np.ones(n, dtype=bool)
    own = scored[0]
    before = [own.scores[i, search.current_column(t)] for i, t in enumerate(own.types)]
    loo = search.loo()
    # No evidence that the search carries to unseen data: keep the model's own.
    kept = not loo > float(np.mean(before))
    if kept:
        at = own
        default_col = search.current_column(None)
        per_type_cols = {t: search.current_column(t) for t in sorted(set(own.types) - {None})}
        after = float(np.mean(before))
    else:
        at, default_col, per_type_cols, after = search.best(everything)
    default = params_at(points[default_col], current.default)
    per_type = {
        t: params_at(points[c], current.per_type.get(t, current.default))
        for t, c in per_type_cols.items()
    }
    groups = {}
    for t, c in per_type_cols.items():
        rows = [i for i, x in enumerate(at.types) if x == t]
        old_rows = [i for i, x in enumerate(own.types) if x == t]
        groups[t] = {
            "images": len(rows),
            "before": float(np.mean([own.scores[i, search.current_column(t)] for i in old_rows]))
            if old_rows
            else float("nan"),
            "after": float(at.scores[rows, c].mean()),
            "params": per_type[t],
        }
    groups["all"] = {
        "images": n,
        "before": float(own.scores[:, search.index[key_of(current.default)]].mean()),
        "after": float(at.scores[:, default_col].mean()),
        "params": default,
    }
    return TuneResult(
        current if kept else Thresholds(default, per_type),
        groups,
        float(np.mean(before)),
        after,
        loo,
        at.scale,
        own.scale,
        tuple(s.scale for s in scored),
        own.units,
        kept,
    )


def calibrate(
    raw_at: Callable[[float], list[Instances]],
    truths: Sequence[Truth],
    class_names: Sequence[str],
    current: Thresholds,
    grid: TuneGrid | None = None,
    *,
    scale: float = 1.0,
    diameter: float | None = None,
    where: str = "the annotated images",
    progress: bool = True,
) -> TuneResult:
    """Calibrate a model to annotated images without training: for each candidate
    scale, its raw detections once, every grid point scored from them per unit, then
    the choice of :func:`choose` (see the module docstring).

    Args:
        raw_at: the model's raw detections (:meth:`Segmenter.raw`) of every image, in
            ``truths``' order, with the images resized by the factor given.
        truths: one per image (:data:`Truth`).
        class_names: the model's cell types; current: the thresholds to start from
            (always part of the grid); grid: default :meth:`TuneGrid.for_objects` with
            the training objects' sizes unknown.
        scale: the model's own resize factor, searched first (the point to beat).
        diameter: the median cell diameter the model trained on: with two images or
            more the scale is searched too (:func:`candidate_scales`, around the factor
            that gives the truths' median cell that size); None: at ``scale`` only.
        where: the truths, for a message that they hold no cell.
    """
    from cellstack.data.stats import median_diameter

    factors = (scale,)
    # One image's quadrants share its magnification: they cannot tell a scale that
    # carries to the next image from one that fits this one (docs/learning.md section
    # 10: RPE1 from one image moved to 1.18 and lost 0.004), so one image moves the
    # thresholds only.
    if diameter and len(truths) > 1:
        factors = candidate_scales(
            scale, diameter, median_diameter([_sparse(t) for t in truths], where)
        )
    grid = grid_with(grid, current)
    scored = [
        score_images(raw_at(f), truths, class_names, current, grid, scale=f, progress=progress)
        for f in factors
    ]
    return choose(scored, grid, current)


def candidate_scales(current: float, model_diameter: float | None, labels_diameter: float):
    """The resize factors a calibration searches: ``current`` first (the model's own),
    then :data:`SCALE_STEPS` around the factor that brings the labels' median diameter
    to the model's (around ``current`` when the model's is unknown), within
    :data:`~cellstack.config.schema.MAX_RESIZE`."""
    from cellstack.data.stats import size_ratio, within_resize_limit

    centre = current if not model_diameter else size_ratio(model_diameter, labels_diameter)
    out = [current]
    for step in SCALE_STEPS:
        s = within_resize_limit(round(centre * step, 4))
        if all(abs(np.log(s / x)) > 0.05 for x in out):
            out.append(s)
    return tuple(out)


def truth_at(truth: Truth, size: tuple[int, int]) -> sp.csr_matrix:
    """Truth masks, sparse bool[N, h*w], at ``size`` (h, w): the pixels of raw
    detections made at the model's scale (nearest neighbour, as training resizes
    labels); the truth's own masks when the sizes agree (sparse masks are taken as
    they are: they carry no size)."""
    from cellstack.data.dataset import resize_labels
    from cellstack.data.masks import sparse_from_labels, sparse_to_labels

    if isinstance(truth, sp.csr_matrix):
        return truth
    if isinstance(truth, np.ndarray):
        return sparse_from_labels(resize_labels(truth, size))
    masks = truth.sparse_masks()
    if tuple(size) == tuple(truth.shape):
        return masks
    # The masks already read, painted and resized: the image itself is not read again.
    return sparse_from_labels(resize_labels(sparse_to_labels(masks, truth.shape), size))


def _sparse(truth: Truth) -> sp.csr_matrix:
    """Truth masks, sparse bool[N, H*W], at the truth's own size."""
    from cellstack.data.masks import sparse_from_labels

    if isinstance(truth, ImageRecord):
        return truth.sparse_masks()
    return sparse_from_labels(truth) if isinstance(truth, np.ndarray) else truth

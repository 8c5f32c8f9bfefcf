"""``cellstack tune``: search post-processing thresholds per cell type on annotated images.

The model (or ensemble) runs once per image; its raw detections (boxes, scores, labels,
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

Images are grouped by predicted cell type (the majority label, as at prediction time);
each type gets the combination with the best mean competition score, and ``default``
the best over all images. The current thresholds are always part of the grid, so tuning
never lowers the score on the data it ran on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cellstack.data.records import ImageRecord
from cellstack.errors import CellstackError
from cellstack.evaluation.matching import Overlaps, overlaps
from cellstack.evaluation.metric import score_overlaps
from cellstack.inference.postprocess import (
    PostprocessParams,
    Thresholds,
    confidence_order,
    convex_refill,
    majority_type,
    nms_from_overlaps,
    paste_masks,
    pixels_to_sparse,
    remove_overlaps,
    self_overlaps,
)
from cellstack.structures import Instances


@dataclass(frozen=True)
class TuneGrid:
    """Values searched. Every tuning (``cellstack tune``, a CV folder's, the thresholds
    a run chooses after training, :meth:`Segmenter.optimize_thresholds`) searches
    :meth:`for_objects`: confidences 0.05..0.90, three mask thresholds and NMS levels,
    and minimum sizes relative to the objects the model trained on. A grid built by hand
    searches the fields given and these defaults for the rest (one mask threshold)."""

    mask_thresh: tuple[float, ...] = (0.45,)
    mask_nms_iou: tuple[float, ...] = (0.1, 0.2, 0.3)
    min_size: tuple[int, ...] = (0,)
    score_thresh: tuple[float, ...] = tuple(np.round(np.arange(0.05, 0.901, 0.05), 2).tolist())

    @classmethod
    def for_objects(cls, area_p1: float | None) -> TuneGrid:
        """The grid, with minimum sizes relative to the data: 0, 1/2 and 1x ``area_p1``
        (px), the first percentile of the training objects' areas. Where that is
        unknown (a run that did not record it), the original solution's 0, 50, 75, 100
        and 150 px; 0 is always searched, so a size rule never costs on its data."""
        if area_p1 and area_p1 > 0:
            sizes = {0, int(area_p1 // 2), int(area_p1)}
        else:
            sizes = {0, 50, 75, 100, 150}
        return cls(mask_thresh=(0.35, 0.45, 0.55), min_size=tuple(sorted(sizes)))

    def including(self, p: PostprocessParams) -> TuneGrid:
        """This grid plus the values of ``p``."""
        return TuneGrid(
            *(
                tuple(sorted({*getattr(self, k), getattr(p, k)}))
                for k in ("mask_thresh", "mask_nms_iou", "min_size", "score_thresh")
            )
        )


@dataclass
class TuneResult:
    """Per group (a cell type or ``"all"``): image count, score before and after.

    Attributes:
        thresholds: the tuned thresholds.
        groups: ``{group: {"images", "before", "after", "params"}}``.
        before, after: mean score over all images with the old and the tuned thresholds
            (each image with its type's thresholds).
    """

    thresholds: Thresholds
    groups: dict[str, dict] = field(default_factory=dict)
    before: float = float("nan")
    after: float = float("nan")

    def table(self) -> str:
        lines = [f"{'group':<10}{'images':>7}{'before':>9}{'after':>9}  thresholds"]
        for name, g in self.groups.items():
            p = g["params"]
            lines.append(
                f"{name:<10}{g['images']:>7}{g['before']:>9.4f}{g['after']:>9.4f}  "
                f"mask {p.mask_thresh} nms {p.mask_nms_iou} min_size {p.min_size} "
                f"score {p.score_thresh}"
            )
        lines.append(f"{'overall':<10}{'':>7}{self.before:>9.4f}{self.after:>9.4f}")
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
        ``{(mask_thresh, mask_nms_iou, min_size, score_thresh): score}``.
    """
    size = raw.image_size
    raw = raw[confidence_order(raw.scores)]
    scores = raw.scores.float().numpy()
    raw = raw[scores >= min(grid.score_thresh)]
    scores = scores[scores >= min(grid.score_thresh)]
    n_truth = truth.shape[0]
    out = {}
    for mt in grid.mask_thresh:
        pixels = paste_masks(raw.roi_masks, raw.boxes, size, mt)
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
                ov = overlaps(truth, pixels_to_sparse(final, size))
                for st in grid.score_thresh:
                    k = int((final_scores >= st).sum())  # a prefix: scores are sorted
                    keep = ov.pred_idx < k
                    sub = Overlaps(n_truth, k, ov.truth_idx[keep], ov.pred_idx[keep], ov.iou[keep])
                    out[(mt, nms, min_size, st)] = score_overlaps(sub).score
    return out


def tune_thresholds(
    raws: list[Instances],
    records: Sequence[ImageRecord | sp.csr_matrix],
    class_names: Sequence[str],
    current: Thresholds,
    grid: TuneGrid | None = None,
    progress: bool = True,
) -> TuneResult:
    """Search the grid per predicted cell type (see the module docstring).

    Args:
        raws: raw detections per image (:meth:`Segmenter.raw`).
        records: the annotated images, or their truth masks as sparse bool[N, H*W]
            (:func:`~cellstack.data.labels.sparse_from_labels`), in the same order.
        class_names: the model's cell types; current: the thresholds to start from
            (always part of the grid); grid: default :meth:`TuneGrid.for_objects` with
            the training objects' sizes unknown.
    """
    from tqdm import tqdm

    grid = grid or TuneGrid.for_objects(None)
    for p in (current.default, *current.per_type.values()):
        grid = grid.including(p)
    groups: dict[str, list[dict[tuple, float]]] = defaultdict(list)
    types = []
    for raw, rec in tqdm(
        list(zip(raws, records, strict=True)), desc="scoring grid", unit="img", disable=not progress
    ):
        cell_type = majority_type(raw.classes, class_names)
        base = current.per_type.get(cell_type, current.default)
        truth = truth_at(rec, raw.image_size) if isinstance(rec, ImageRecord) else rec
        scores = score_grid(raw, truth, grid, convex=base.convex_refill)
        groups["all"].append(scores)
        if cell_type is not None:
            groups[cell_type].append(scores)
        types.append(cell_type)

    def key_of(p: PostprocessParams) -> tuple:
        return (p.mask_thresh, p.mask_nms_iou, p.min_size, p.score_thresh)

    def best(per_image: list[dict[tuple, float]]) -> tuple[tuple, float]:
        keys = per_image[0].keys()
        means = {k: float(np.mean([s[k] for s in per_image])) for k in keys}
        top = max(means.values())
        return next(k for k in keys if means[k] == top), top

    def as_params(key: tuple, base: PostprocessParams) -> PostprocessParams:
        return replace(
            base, mask_thresh=key[0], mask_nms_iou=key[1], min_size=int(key[2]), score_thresh=key[3]
        )

    result_groups = {}
    default_key, _ = best(groups["all"])
    default = as_params(default_key, current.default)
    per_type = {}
    for name in sorted(k for k in groups if k != "all"):
        key, _ = best(groups[name])
        per_type[name] = as_params(key, current.per_type.get(name, current.default))
    tuned = Thresholds(default, per_type)
    before, after = [], []
    for name, members in groups.items():
        if name == "all":
            continue
        old_key = key_of(current.per_type.get(name, current.default))
        new_key = key_of(per_type[name])
        result_groups[name] = {
            "images": len(members),
            "before": float(np.mean([s[old_key] for s in members])),
            "after": float(np.mean([s[new_key] for s in members])),
            "params": per_type[name],
        }
    for scores, t in zip(groups["all"], types, strict=True):
        old = current.per_type.get(t, current.default) if t else current.default
        new = tuned.per_type.get(t, tuned.default) if t else tuned.default
        before.append(scores[key_of(old)])
        after.append(scores[key_of(new)])
    result_groups["all"] = {
        "images": len(groups["all"]),
        "before": float(np.mean([s[key_of(current.default)] for s in groups["all"]])),
        "after": float(np.mean([s[default_key] for s in groups["all"]])),
        "params": default,
    }
    return TuneResult(tuned, result_groups, float(np.mean(before)), float(np.mean(after)))


def truth_at(rec: ImageRecord, size: tuple[int, int]) -> sp.csr_matrix:
    """A record's truth masks, sparse bool[N, h*w], at ``size`` (h, w): the pixels of
    raw detections made at the model's scale (nearest neighbour, as training resizes
    labels); its own masks when the sizes agree."""
    from cellstack.data.dataset import resize_labels
    from cellstack.data.labels import sparse_from_labels
    from cellstack.data.maskcache import sparse_to_labels

    masks = rec.sparse_masks()
    if tuple(size) == tuple(rec.shape):
        return masks
    # The masks already read, painted and resized: the image itself is not read again.
    return sparse_from_labels(resize_labels(sparse_to_labels(masks, rec.shape), size))


def run_tune(
    source_path,
    data,
    *,
    fold: int | None = None,
    overrides: tuple[str, ...] = (),
    device: str = "auto",
    grid: TuneGrid | None = None,
    progress: bool = True,
    allow_unfinished: bool = False,
) -> tuple[TuneResult, object]:
    """``cellstack tune``: predict ``data`` (or its fold ``fold``) once with a run or an
    ensemble, search thresholds, write ``thresholds.yaml``; returns (result, its path).

    A CV folder (``cellstack cv``) is tuned on its stored out-of-fold detections
    instead, without running a model; ``data`` then defaults to the CV's data.
    ``allow_unfinished``: a run without ``model.pt`` uses its latest checkpoint.
    """
    from cellstack.data.layouts import load_dataset
    from cellstack.inference.cvfolder import CVFolder
    from cellstack.inference.run import raw_predictions
    from cellstack.inference.sources import load_source, write_thresholds
    from cellstack.modeling.builtin import models_root

    cv = CVFolder.find(source_path)
    if cv is not None:
        return _tune_cv(cv, data, fold, overrides, grid, progress)
    if data is None:
        raise CellstackError("tune needs DATA (annotated images) unless SOURCE is a CV folder")
    src = load_source(source_path, overrides, allow_unfinished=allow_unfinished)
    if src.thresholds_path is not None and src.thresholds_path.parent.resolve().is_relative_to(
        models_root().resolve()
    ):
        raise CellstackError(
            f"{source_path} is a built-in model, which tune does not change; finetune it "
            f"(cellstack train DATA --config configs/finetune.yaml init.from={source_path}) "
            "and tune that run, or pass predict.* thresholds to predict"
        )
    records = _fold_records(load_dataset(data), data, fold)
    raws = raw_predictions(src, records, device=device, progress=progress)
    grid = grid or TuneGrid.for_objects(src.area_p1)
    result = tune_thresholds(raws, records, src.class_names, src.thresholds, grid, progress)
    write_thresholds(
        src.thresholds_path,
        result.thresholds,
        f"written by cellstack tune on {len(records)} images of {data}"
        + (f" (fold {fold})" if fold is not None else "")
        + f"; score {result.before:.4f} -> {result.after:.4f}",
    )
    return result, src.thresholds_path


def _fold_records(records: list, data, fold: int | None) -> list:
    """The records of fold ``fold`` of ``DATA/folds.csv`` (all of them for None)."""
    from cellstack.data.folds import folds_beside, read_folds_csv

    if fold is None:
        return records
    path = folds_beside(data)
    if not path.is_file():
        raise CellstackError(f"--fold needs {path} (cellstack folds)")
    folds = read_folds_csv(path)
    records = [r for r in records if folds.get(r.image_id) == fold]
    if not records:
        raise CellstackError(f"fold {fold} of {path} has no images")
    return records


def _tune_cv(cv, data, fold, overrides, grid, progress) -> tuple[TuneResult, object]:
    """Tune on a CV folder's stored out-of-fold detections: no model runs."""
    from cellstack.config import config_from_dict, config_to_dict
    from cellstack.data.folds import read_folds_csv
    from cellstack.data.splits import cv_records
    from cellstack.inference.sources import (
        THRESHOLDS,
        resolve_thresholds,
        trained_sizes,
        write_thresholds,
    )

    data = Path(data) if data is not None else cv.data_path()
    cfg = config_from_dict(config_to_dict(cv.config()), overrides)
    pool, class_names = cv_records(data, cfg)
    raws = cv.load_oof()
    records = [r for r in pool if r.image_id in raws]
    if fold is not None:
        fold_of = read_folds_csv(cv.folds_path)
        records = [r for r in records if fold_of.get(r.image_id) == fold]
    if not records:
        raise CellstackError(f"{cv.path}: no OOF prediction matches an image of {data}")
    # The starting point is what predict would apply (thresholds given on the command
    # line beat thresholds.yaml).
    current = resolve_thresholds(cfg, overrides, tuned=cv.path / THRESHOLDS)
    grid = grid or TuneGrid.for_objects(trained_sizes(cv.fold_run(0))["area_p1"])
    result = tune_thresholds(
        [raws[r.image_id] for r in records], records, class_names, current, grid, progress
    )
    path = cv.path / THRESHOLDS
    write_thresholds(
        path,
        result.thresholds,
        f"written by cellstack tune on the OOF predictions of {len(records)} images of {data}"
        + (f" (fold {fold})" if fold is not None else "")
        + f"; score {result.before:.4f} -> {result.after:.4f}",
    )
    return result, path

"""The Sartorius competition metric.

For each image and each IoU threshold t in 0.50, 0.55, ..., 0.95, a prediction matches
a truth when IoU > t (strictly), and the image's value at t is TP / (TP + FP + FN), with
FP the unmatched predictions and FN the unmatched truths. The image score is the mean
over the ten thresholds; a dataset's score is the mean over images.

Edge cases: an image with neither truths nor predictions scores 1 (nothing to find,
nothing found); one with only truths or only predictions scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellstack.evaluation.matching import Overlaps, count_matches, overlaps, paired_masks

#: The competition's IoU thresholds, float64[10]: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


@dataclass(frozen=True)
class ImageScore:
    """One image's result.

    Attributes:
        score: mean over thresholds of TP / (TP + FP + FN).
        tp, fp, fn: int64[T] counts at each threshold.
        thresholds: float64[T].
    """

    score: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    thresholds: np.ndarray

    @property
    def per_threshold(self) -> np.ndarray:
        """float64[T]: TP / (TP + FP + FN) at each threshold (1 where all are 0)."""
        return _precision(self.tp, self.fp, self.fn)


def _precision(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = tp + fp + fn
    return np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)


def score_image(
    truth: object,
    pred: object,
    *,
    shape: tuple[int, int] | None = None,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> ImageScore:
    """Score one image.

    Args:
        truth, pred: instance masks as a label image int[H, W], a stack bool[N, H, W]
            or a sparse bool[N, H*W] matrix (see :func:`~cellstack.evaluation.matching.
            as_sparse`); the two may use different forms.
        shape: ``(H, W)``, needed to check sizes when either side is sparse.
        thresholds: IoU thresholds (default: the competition's ten).
    """
    t, p = paired_masks(truth, pred, shape, ("truth", "pred"))
    return score_overlaps(overlaps(t, p), thresholds)


def score_overlaps(ov: Overlaps, thresholds: np.ndarray = IOU_THRESHOLDS) -> ImageScore:
    """Score one image from its truth/prediction :class:`Overlaps` (for callers that
    score many subsets of one prediction, like ``tune``, without recomputing them)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp = count_matches(ov, thresholds)
    fp = ov.n_pred - tp
    fn = ov.n_truth - tp
    return ImageScore(float(_precision(tp, fp, fn).mean()), tp, fp, fn, thresholds)


def score_prefixes(
    ov: Overlaps, counts: Sequence[int], thresholds: np.ndarray = IOU_THRESHOLDS
) -> np.ndarray:
    """float64[len(counts)]: the score of each prefix of the predictions (the first
    ``k`` of ``ov``'s predictions, for every ``k`` in ``counts``), as
    :func:`score_overlaps` gives it for each, from one :class:`Overlaps`.

    What ``tune`` scores for every confidence threshold (its predictions are sorted by
    confidence, so a threshold keeps a prefix). When the pairs above the lowest
    threshold are one to one already (non-overlapping masks on both sides), so is every
    subset of them, and the true positives of all prefixes are counted at once.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    keep = ov.iou > thresholds.min()
    rows, cols = ov.truth_idx[keep], ov.pred_idx[keep]
    if len(np.unique(rows)) != len(rows) or len(np.unique(cols)) != len(cols):
        return np.array([score_overlaps(_prefix(ov, int(k)), thresholds).score for k in counts])
    above = ov.iou[keep][:, None] > thresholds[None, :]  # bool[pairs, T]
    inside = cols[None, :] < counts[:, None]  # bool[K, pairs]
    tp = inside.astype(np.int64) @ above.astype(np.int64)  # int64[K, T]
    fp = counts[:, None] - tp
    fn = ov.n_truth - tp
    # Row by row, as score_overlaps averages, so the sums round alike.
    return np.array([row.mean() for row in _precision(tp, fp, fn)])


def _prefix(ov: Overlaps, k: int) -> Overlaps:
    """The overlaps of the first ``k`` predictions."""
    keep = ov.pred_idx < k
    return Overlaps(ov.n_truth, k, ov.truth_idx[keep], ov.pred_idx[keep], ov.iou[keep])

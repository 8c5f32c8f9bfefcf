"""The Sartorius competition metric.

For each image and each IoU threshold t in 0.50, 0.55, ..., 0.95, a prediction matches
a truth when IoU > t (strictly), and the image's value at t is TP / (TP + FP + FN), with
FP the unmatched predictions and FN the unmatched truths. The image score is the mean
over the ten thresholds; a dataset's score is the mean over images.

Edge cases: an image with neither truths nor predictions scores 1 (nothing to find,
nothing found); one with only truths or only predictions scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellstack.evaluation.matching import Overlaps, as_sparse, count_matches, overlaps

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
    t = as_sparse(truth, shape)
    p = as_sparse(pred, shape)
    return score_overlaps(overlaps(t, p), thresholds)


def score_overlaps(ov: Overlaps, thresholds: np.ndarray = IOU_THRESHOLDS) -> ImageScore:
    """Score one image from its truth/prediction :class:`Overlaps` (for callers that
    score many subsets of one prediction, like ``tune``, without recomputing them)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp = count_matches(ov, thresholds)
    fp = ov.n_pred - tp
    fn = ov.n_truth - tp
    return ImageScore(float(_precision(tp, fp, fn).mean()), tp, fp, fn, thresholds)

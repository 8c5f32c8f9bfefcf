"""Sparse instance-mask overlaps.

A set of N instance masks over an image of P = H*W pixels is a sparse bool[N, P] CSR
matrix: row i lists the (row-major) pixels of instance i. Masks may overlap (Sartorius
training masks sometimes do), which a label image could not represent.

The intersection of every truth with every prediction is one sparse product
``truth @ pred.T``; only pairs that touch are ever stored, so the cost grows with the
number of annotated pixels, not with N * M * P as with one dense mask per object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from cellstack.data.masks import sparse_from_dense, sparse_from_labels
from cellstack.errors import ArgumentTypeError, CellstackError


def as_sparse(
    masks: object, shape: tuple[int, int] | None = None, *, name: str = "masks"
) -> sp.csr_matrix:
    """Accept a sparse matrix bool[N, H*W], a label image int[H, W] or a mask stack
    bool[N, H, W] (a 0/1 array of any number dtype too).

    Args:
        masks: the instance masks in any of those forms.
        shape: ``(H, W)``, checked against the input when given.
        name: the argument's name in errors.

    Raises:
        CellstackError: any other array (a colour or 4-D array, a 2-D bool mask, which
            could be one object or many), a label image with negative, fractional or
            non-finite ids (a background of 0.5 or NaN would be an object), a 3-D array
            with values other than 0 and 1 (a stack of label images: match its planes
            one by one), or a size other than ``shape``.
    """
    masks, found = masks_and_shape(masks, name)
    if shape is not None:
        if found is not None and tuple(found) != tuple(shape):
            raise CellstackError(
                f"{name} are {found[0]}x{found[1]} (HxW), the image is {shape[0]}x{shape[1]}"
            )
        if masks.shape[1] != shape[0] * shape[1]:
            raise CellstackError(
                f"{name} have {masks.shape[1]} pixels, the image {shape[0]}x{shape[1]}"
            )
    return masks


def masks_and_shape(masks: object, name: str) -> tuple[sp.csr_matrix, tuple[int, int] | None]:
    """:func:`as_sparse` of ``masks`` and their ``(H, W)`` (None for sparse input)."""
    if sp.issparse(masks):
        out = sp.csr_matrix(masks)
        if out.ndim != 2:
            raise CellstackError(f"{name}: sparse masks must be 2-D bool[N, H*W]")
        return out, None
    if isinstance(masks, str | bytes) or masks is None:
        raise ArgumentTypeError(_kinds(name, type(masks).__name__))
    try:
        array = np.asarray(masks)
    except (TypeError, ValueError):
        raise ArgumentTypeError(_kinds(name, type(masks).__name__)) from None
    if array.dtype.kind not in "biuf" or array.ndim not in (2, 3) or 0 in array.shape[-2:]:
        raise ArgumentTypeError(_kinds(name, f"{array.dtype}{list(array.shape)}"))
    if array.ndim == 3:
        if array.dtype != bool:
            if not np.isin(array, (0, 1)).all():
                raise CellstackError(
                    f"{name}: a 3-D array is a mask stack bool[N, H, W] and this one holds "
                    "values other than 0 and 1 (a stack of label images? match its planes "
                    "one by one)"
                )
        if not len(array):  # a stack of no mask: no object
            return sp.csr_matrix((0, array.shape[1] * array.shape[2]), dtype=bool), array.shape[1:]
        return sparse_from_dense(array), array.shape[1:]
    if array.dtype == bool:
        raise CellstackError(
            f"{name}: a 2-D bool mask could be one object or many; give a label image "
            "(e.g. scipy.ndimage.label(mask)[0]) or a stack bool[1, H, W]"
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise CellstackError(f"{name}: a label image with NaN or infinite values")
        if not (np.mod(array, 1) == 0).all():
            raise CellstackError(f"{name}: a label image with fractional ids (e.g. 0.5)")
    if array.size and array.min() < 0:
        raise CellstackError(f"{name}: a label image with negative ids")
    return sparse_from_labels(array), array.shape


def paired_masks(
    truth: object,
    pred: object,
    shape: tuple[int, int] | None = None,
    names: tuple[str, str] = ("y_true", "y_pred"),
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """:func:`as_sparse` of a truth and a prediction of one image, checked to cover the
    same pixels: a 10x11 and an 11x10 label image are not one image, flat or not."""
    t = as_sparse(truth, shape, name=names[0])
    p = as_sparse(pred, shape, name=names[1])
    t_shape = None if sp.issparse(truth) else np.shape(truth)[-2:]
    p_shape = None if sp.issparse(pred) else np.shape(pred)[-2:]
    if t_shape is not None and p_shape is not None and tuple(t_shape) != tuple(p_shape):
        raise CellstackError(
            f"{names[0]} is {t_shape[0]}x{t_shape[1]} (HxW) and {names[1]} "
            f"{p_shape[0]}x{p_shape[1]}: not the same pixels"
        )
    if t.shape[1] != p.shape[1]:
        raise CellstackError(
            f"{names[0]} covers {t.shape[1]} pixels and {names[1]} {p.shape[1]}: not the same image"
        )
    return t, p


def _kinds(name: str, got: str) -> str:
    return (
        f"{name} must be a label image int[H, W], a mask stack bool[N, H, W] or sparse "
        f"masks bool[N, H*W], got {got}"
    )


@dataclass(frozen=True)
class Overlaps:
    """IoU of every touching (truth, prediction) pair; absent pairs have IoU 0.

    Attributes:
        n_truth, n_pred: instance counts.
        truth_idx, pred_idx: int64[K] the pair's row in truth / prediction.
        iou: float64[K] intersection over union of the pair.
    """

    n_truth: int
    n_pred: int
    truth_idx: np.ndarray
    pred_idx: np.ndarray
    iou: np.ndarray

    def dense(self) -> np.ndarray:
        """The full IoU matrix float64[n_truth, n_pred]."""
        out = np.zeros((self.n_truth, self.n_pred))
        out[self.truth_idx, self.pred_idx] = self.iou
        return out


def overlaps(truth: sp.csr_matrix, pred: sp.csr_matrix) -> Overlaps:
    """IoUs between two sparse mask sets over the same pixels."""
    if truth.shape[1] != pred.shape[1]:
        raise ValueError(f"mask sets cover {truth.shape[1]} and {pred.shape[1]} pixels")
    # int32 products: bool sparse products would saturate at True instead of counting.
    t = truth.astype(np.int32)
    p = pred.astype(np.int32)
    inter = (t @ p.T).tocoo()
    area_t = np.asarray(t.sum(axis=1)).ravel()
    area_p = np.asarray(p.sum(axis=1)).ravel()
    rows, cols = inter.row.astype(np.int64), inter.col.astype(np.int64)
    i = inter.data.astype(np.float64)
    union = area_t[rows] + area_p[cols] - i
    return Overlaps(truth.shape[0], pred.shape[0], rows, cols, i / union)


def overlaps_disjoint(truth: sp.csr_matrix, pred: Sequence[np.ndarray]) -> Overlaps:
    """:func:`overlaps` for predictions that never share a pixel (after overlap
    removal), given as flat pixel-index arrays: each truth pixel looks up the one
    prediction it lies in, which is much faster than a sparse product when the same
    truth is matched against many predictions (``tune``). Same pairs, same IoUs."""
    t = truth.tocsr()
    n_pred = len(pred)
    owner = np.zeros(t.shape[1], dtype=np.int64)  # 0: no prediction, k + 1: prediction k
    for k, p in enumerate(pred):
        owner[p] = k + 1
    area_t = np.diff(t.indptr).astype(np.int64)
    rows = np.repeat(np.arange(t.shape[0], dtype=np.int64), area_t)
    ids = owner[t.indices]
    hit = ids > 0
    pairs, inter = np.unique(rows[hit] * (n_pred + 1) + ids[hit], return_counts=True)
    r, c = np.divmod(pairs, n_pred + 1)
    c -= 1
    area_p = np.array([len(p) for p in pred], dtype=np.int64)
    i = inter.astype(np.float64)
    return Overlaps(t.shape[0], n_pred, r, c, i / (area_t[r] + area_p[c] - i))


def count_matches(ov: Overlaps, thresholds: np.ndarray) -> np.ndarray:
    """True positives at each threshold: int64[T].

    A prediction matches a truth when IoU > t, and each object counts at most once
    (a one-to-one matching of maximum size). For t >= 0.5 and non-overlapping masks on
    either side, no object can match twice, so the count is simply the number of pairs
    above t; only when masks overlap do we solve the bipartite matching exactly.
    """
    from scipy.sparse.csgraph import maximum_bipartite_matching

    tp = np.zeros(len(thresholds), dtype=np.int64)
    for k, t in enumerate(thresholds):
        keep = ov.iou > t
        rows, cols = ov.truth_idx[keep], ov.pred_idx[keep]
        if len(np.unique(rows)) == len(rows) and len(np.unique(cols)) == len(cols):
            tp[k] = len(rows)
            continue
        graph = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(ov.n_truth, ov.n_pred)
        )
        tp[k] = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return tp


class Matching(NamedTuple):
    """Object-level agreement at one IoU threshold (stardist's ``matching`` fields).

    Attributes:
        thresh: the IoU a pair must exceed to match.
        tp, fp, fn: matched truths, unmatched predictions, unmatched truths.
        precision: tp / (tp + fp); recall: tp / (tp + fn); f1: their harmonic mean;
            accuracy: tp / (tp + fp + fn), the competition metric's term. Each 0 when
            its denominator is (nothing to count), except 1 when both sides are empty.
        n_true, n_pred: object counts.
    """

    thresh: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    n_true: int
    n_pred: int


def matching(y_true: object, y_pred: object, thresh: float = 0.5) -> Matching:
    """How the objects of two segmentations of one image match (one to one, IoU >
    ``thresh``), as Cellpose's and StarDist's users know it.

    Args:
        y_true, y_pred: label images int[H, W], mask stacks bool[N, H, W] or sparse
            masks (:func:`as_sparse`), over the same pixels.
        thresh: IoU threshold in [0, 1).
    """
    if isinstance(thresh, bool) or not isinstance(thresh, int | float | np.number):
        raise ArgumentTypeError(f"thresh must be a number in [0, 1), got {thresh!r}")
    if not 0 <= thresh < 1:
        raise CellstackError(f"thresh must be in [0, 1), got {thresh}")
    truth, true_shape = masks_and_shape(y_true, "y_true")
    pred, pred_shape = masks_and_shape(y_pred, "y_pred")
    if true_shape is not None and pred_shape is not None and true_shape != pred_shape:
        raise CellstackError(
            f"y_true is {true_shape[0]}x{true_shape[1]} (HxW) and y_pred "
            f"{pred_shape[0]}x{pred_shape[1]}: not the same pixels"
        )
    if truth.shape[1] != pred.shape[1]:
        raise CellstackError(
            f"y_true covers {truth.shape[1]} pixels and y_pred {pred.shape[1]}: not the same image"
        )
    tp = int(count_matches(overlaps(truth, pred), np.array([thresh]))[0])
    n_true, n_pred = truth.shape[0], pred.shape[0]
    fp, fn = n_pred - tp, n_true - tp

    def ratio(a: int, b: int) -> float:
        return a / b if b else float(n_true == n_pred == 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return Matching(
        float(thresh), tp, fp, fn, precision, recall, f1, ratio(tp, tp + fp + fn), n_true, n_pred
    )
